"""Benchmark evaluation: task items, the batched scorer with a shared-context KV cache, suite metrics, the in-domain task and the 13-gram contamination index."""
