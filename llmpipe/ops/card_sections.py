"""The sections of the model card (llmpipe/ops/card.py), each from the files a pipeline run writes. A
section renders what it finds; a file that is not there is recorded by the card's Inputs and named."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from llmpipe.ops.card_html import cell, figure, key_values, line_chart, marked, missing_note, table

M = "data/metrics/"
TSV_CURVES = {"train": "data/plots/train.tsv", "val": "data/plots/val.tsv", "bench": "data/plots/bench.tsv"}


def model(inputs, about: dict) -> str:
    parts = []
    if about.get("run_id"):
        parts.append(f"<p>MLflow run <code>{escape(about['run_id'])}</code></p>")
    if about.get("tags"):
        rows = [[escape(k), cell(v, f"MLflow tags of {about['target']}: {k}")] for k, v in about["tags"].items()]
        parts.append(table(["tag", "value"], rows, [f"MLflow tags of {about['target']}"]))
    pretrain = inputs.json(M + "pretrain.json")
    if pretrain is not None:
        parts.append("<h3>Pretraining</h3>" + key_values(pretrain, M + "pretrain.json"))
    return "".join(parts) or missing_note([M + "pretrain.json"])


def _rules(metrics: dict) -> list[str]:
    """The filter's rules (or reasons) from its metrics keys removed_<rule>_docs / _bytes."""
    return sorted(k[len("removed_"):-len("_docs")] for k in metrics if k.startswith("removed_") and k.endswith("_docs"))


def funnel(inputs) -> str:
    scrape, filt, dedup = inputs.json(M + "scrape.json"), inputs.json(M + "filter.json"), inputs.json(M + "dedup.json")
    manifest = inputs.json("data/tokens/manifest.json")
    rows = []
    blank = "<td>-</td>"

    def row(stage, source, docs_in, docs_out, bytes_in, bytes_out):
        def c(key):
            if key is None:
                return blank
            if isinstance(key, tuple):  # derived: (value, how)
                return cell(key[0], f"{source}: {key[1]}")
            return cell(data[key], f"{source}: {key}") if key in data else blank
        rows.append([stage, c(docs_in), c(docs_out), c(bytes_in), c(bytes_out), source])

    if (data := scrape) is not None:
        row("scrape", M + "scrape.json", "docs_in", "docs_out", None, "bytes_out")
    if (data := filt) is not None:
        row("filter", M + "filter.json", "docs_in", "docs_out", "bytes_in", "bytes_out")
    if (data := dedup) is not None:
        kept = (dedup["bytes_in"] - dedup["bytes_removed"], "bytes_in - bytes_removed") \
            if {"bytes_in", "bytes_removed"} <= dedup.keys() else None
        row("dedup", M + "dedup.json", "docs_in", "docs_out", "bytes_in", kept)
    if (data := manifest) is not None:
        docs, size = manifest.get("docs", {}), manifest.get("bytes", {})
        src = "data/tokens/manifest.json"
        for split in sorted(docs):
            rows.append([f"tokenize ({split})", blank, cell(docs[split], f"{src}: docs.{split}"), blank,
                         cell(size.get(split, 0), f"{src}: bytes.{split}"), src])
    out = [table(["stage", "docs in", "docs out", "bytes in", "bytes out", "file"], rows,
                 sorted({r[-1] for r in rows}))] if rows else []
    if scrape is not None:
        report = inputs.json("data/scrape/report.json") or {}
        skipped = report.get("skipped", {})
        src = "data/scrape/report.json"
        if skipped:
            out.append("<h3>Scrape: inputs skipped, by reason</h3>" + table(
                ["reason", "inputs"], [[escape(r), cell(n, f"{src}: skipped.{r}")] for r, n in sorted(skipped.items())],
                [src]))
        else:
            out.append(f'<p class="src">scrape skipped no input (source: {src})</p>')
    if filt is not None:
        src = M + "filter.json"
        report = inputs.json("data/filter/report.json") or {}
        rules = _rules(filt)
        hit = [r for r in rules if filt.get(f"removed_{r}_docs")]
        why = lambda r: (report.get(r, {}).get("examples") or [{}])[0].get("reason", "")  # noqa: E731
        out.append("<h3>Filter: documents removed, by rule</h3>" + table(
            ["rule", "docs", "bytes", "an example's reason"],
            [[escape(r), cell(filt[f"removed_{r}_docs"], f"{src}: removed_{r}_docs"),
              cell(filt.get(f"removed_{r}_bytes", 0), f"{src}: removed_{r}_bytes"), why(r)] for r in hit],
            [src, "data/filter/report.json"]))
        quiet = [r for r in rules if r not in hit]
        if quiet:
            out.append(f'<p class="src">removed nothing: {escape(", ".join(quiet))} (source: {src})</p>')
    if dedup is not None:
        src = M + "dedup.json"
        reasons = ["exact_dups", "near_dups", "removed_as_duplicate_of_reference", "removed_below_threshold",
                   "bytes_removed", "candidate_pairs", "candidates_rejected", "short_docs", "empty_docs",
                   "boilerplate_lines"]
        out.append("<h3>Dedup: removed, by reason</h3>" + table(
            ["reason", "count"], [[r, cell(dedup[r], f"{src}: {r}")] for r in reasons if r in dedup], [src]))
    return "".join(out)


def tokenizer(inputs) -> str:
    rows, sources = [], []
    meta = inputs.json(M + "tokenizer.json")
    if meta is not None:
        sources.append(M + "tokenizer.json")
        rows += [[k, cell(meta[k], f"{M}tokenizer.json: {k}")] for k in ("vocab_size", "eot_id", "train_docs")
                 if k in meta]
    tok = inputs.json(M + "tokenize.json")
    if tok and tok.get("val_tokens"):
        sources.append(M + "tokenize.json")
        rows.append(["bytes per token (val split)", cell(tok["val_bytes"] / tok["val_tokens"],
                                                          f"{M}tokenize.json: val_bytes / val_tokens")])
        rows += [[k, cell(tok[k], f"{M}tokenize.json: {k}")] for k in ("train_tokens", "val_tokens") if k in tok]
    ev = inputs.json(M + "evaluate.json")
    if ev and "bytes_per_token" in ev:
        sources.append(M + "evaluate.json")
        rows.append(["bytes per token (evaluated tokens)",
                     cell(ev["bytes_per_token"], f"{M}evaluate.json: bytes_per_token")])
    out = table(["statistic", "value"], rows, sources) if rows else ""
    spec = inputs.json("data/tokenizer/tokenizer.json")
    if spec is not None:
        special = [t for t in spec.get("added_tokens", []) if t.get("special")]
        src = "data/tokenizer/tokenizer.json"
        out += "<h3>Special tokens</h3>" + table(
            ["id", "token"], [[cell(t["id"], f"{src}: added_tokens"), t["content"]] for t in special], [src])
    return out


def _vocab_size(inputs) -> int | None:
    for rel in (M + "tokenizer.json", "data/tokens/manifest.json"):
        found = inputs.json(rel)
        if found and found.get("vocab_size"):
            return int(found["vocab_size"])
    return None


def curves(inputs) -> str:
    out = []
    train, val = inputs.rows(TSV_CURVES["train"]), inputs.rows(TSV_CURVES["val"])
    series = []
    if train:
        series.append(("train loss", [r["tokens"] for r in train], [r["loss"] for r in train]))
    if val:
        series.append(("val loss", [r["tokens"] for r in val], [r["val_loss"] for r in val]))
    vocab = _vocab_size(inputs)
    baselines = [(f"uniform over {vocab} tokens (ln V)", math.log(vocab))] if vocab else []
    if series:
        svg = line_chart(series, "tokens seen", "cross-entropy (nats per token)", baselines)
        drawn = [TSV_CURVES[k] for k, rows in (("train", train), ("val", val)) if rows]
        out.append(figure(svg, "source: " + ", ".join(drawn)
                          + (f"; baseline: vocab_size of {M}tokenizer.json" if vocab else "")))
    bench = inputs.rows(TSV_CURVES["bench"])
    if bench:
        columns = [c for c in bench[0] if c.endswith("acc_norm")]
        series = [(c.removesuffix("_acc_norm") if c != "acc_norm" else "mean", [r["tokens"] for r in bench],
                   [r[c] for r in bench]) for c in columns]
        results = inputs.json("data/evals/benchmark.json") or {}
        chance = {name: t.get("random") for name, t in results.get("tasks", {}).items()}
        named = {c.removesuffix("_acc_norm"): chance.get(c.removesuffix("_acc_norm"))
                 for c in columns if c != "acc_norm"}
        levels: dict[float, list[str]] = {}
        for name, level in sorted(named.items()):
            if level is not None:
                levels.setdefault(level, []).append(name)
        baselines = [(f"chance: {', '.join(names)}", level) for level, names in sorted(levels.items())]
        svg = line_chart(series, "tokens seen", "accuracy (acc_norm), in-loop items", baselines)
        chance_src = "; chance: data/evals/benchmark.json" if baselines else ""
        out.append(figure(svg, f"source: {TSV_CURVES['bench']}{chance_src}"))
    return "".join(out) or "<p>no curves</p>"


def evaluation(inputs) -> str:
    out = []
    ev = inputs.json(M + "evaluate.json")
    if ev is not None:
        src = M + "evaluate.json"
        bpb = [[k, cell(v, f"{src}: {k}")] for k, v in sorted(ev.items()) if k.endswith("bits_per_byte")]
        if bpb:
            out.append("<h3>Held-out bits per byte: the model and its baselines</h3>"
                       + table(["measure", "bits per byte"], bpb, [src]))
        out.append("<h3>evaluate.json</h3>" + key_values(ev, src))
    results = inputs.json("data/evals/benchmark.json")
    if results is not None:
        src = "data/evals/benchmark.json"
        columns = sorted({k for t in results.get("tasks", {}).values() for k, v in t.items()
                          if not isinstance(v, (dict, list))})
        rows = [[escape(name)] + [cell(t[c], f"{src}: tasks.{name}.{c}") if c in t else "<td>-</td>" for c in columns]
                for name, t in sorted(results.get("tasks", {}).items())]
        out.append("<h3>Benchmarks</h3>" + table(["task", *columns], rows, [src, "data/evals/benchmark.md"]))
        out.append(key_values({k: v for k, v in results.items() if k != "tasks"}, src))
    chat = inputs.json(M + "chat-eval.json")
    if chat is not None:
        out.append("<h3>Chat evaluation (base and finetuned, with the baselines and intervals it holds)</h3>"
                   + key_values(chat, M + "chat-eval.json"))
    return "".join(out) or "<p>no evaluation</p>"


def samples(inputs, root: Path, params_path: Path | None) -> str:
    rows = inputs.rows("data/samples/samples.jsonl", jsonl=True)
    if not rows:
        return "<p>no samples</p>"
    tracer, why = None, ""
    index = inputs.folder("data/trace")
    if index is not None:
        from llmpipe.util.io import InputError

        try:
            from llmpipe.ops.trace import make_tracer

            tracer = make_tracer(root, params_path or root / "params.yaml")
        except (InputError, Exception) as err:  # noqa: BLE001 - a card without marks is still a card
            why = f"data/trace: not usable ({str(err).splitlines()[0]})"
            inputs.note("data/trace", why)
    out = []
    if tracer is not None:
        out.append(f'<p class="src">marked: spans of {tracer.min_tokens}+ tokens (trace.min_tokens) found verbatim '
                   "in the training documents; hover a mark for the documents (source: data/trace)</p>")
    for i, s in enumerate(rows):
        text = str(s.get("completion", ""))
        spans = tracer.trace(text)["spans"] if tracer is not None and text else []
        out.append(f'<h3>Sample {i + 1}</h3><div class="sample" data-spans="{len(spans)}"><span class="prompt">'
                   f'{escape(str(s.get("prompt", "")))}</span>{marked(text, spans)}</div>'
                   f'<p class="src">source: data/samples/samples.jsonl, line {i + 1}'
                   f'{"; marks: data/trace" if spans else ""}</p>')
    return "".join(out)


def lineage(inputs, about: dict, params, env: list[tuple[str, str, str]]) -> str:
    from llmpipe.ops.lineage import chain

    where = f"dvc.lock at {about['commit']}" if about.get("target") != "the workspace" else "dvc.lock"
    out = [f"<p>git commit <code>{escape(about.get('commit') or 'unknown')}</code></p>"]
    rows = [[r["stage"] if j == 0 else "", path, md5] for r in chain(about.get("lock") or {})
            for j, (path, md5) in enumerate(r["outs"])]
    if rows:
        out.append("<h3>Data versions</h3>" + table(["stage", "output", "md5"], rows, [where]))
    else:
        out.append(missing_note([f"{where}: no data outputs recorded"]))
    if isinstance(params, str):
        out.append(missing_note([params]))
    else:
        rows = [[escape(k), cell(v, "params.yaml: " + k), cell(d, "llmpipe/config defaults: " + k)] for k, v, d in params]
        out.append("<h3>Params that differ from the defaults</h3>" + (
            table(["key", "value", "default"], rows, ["params.yaml", "llmpipe/config (typed defaults)"])
            if rows else "<p>none: every params leaf is the default</p>"))
    pretrain = inputs.json(M + "pretrain.json") or {}
    trained = [[f"training: {k}", cell(pretrain[k], f"{M}pretrain.json: {k}")]
               for k in ("precision", "device", "cpu", "cpu_bf16_units", "gpu", "parallel", "world_size") if k in pretrain]
    if trained:
        out.append("<h3>How the model was trained</h3>" + table(["what", "value"], trained, [M + "pretrain.json"]))
    out.append("<h3>Environment that built this card</h3>" + table(
        ["what", "value"], [[w, cell(v, s)] for w, v, s in env], sorted({s for _, _, s in env})))
    return "".join(out)

