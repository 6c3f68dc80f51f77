"""Autoregressive sampling with a KV cache: temperature, top-k, top-p, stop at <|endoftext|>.

Prompts longer than the context are cut from the left to leave room for generation. When the
context fills during generation, the cache is rebuilt from the most recent half of the context
(a sliding window), so generation can run past block_size.

With compile=True each token after the prompt's prefill is one GPT.decode_step: a fixed-shape
step over the whole preallocated cache under a mask, which torch.compile builds once per batch size,
turning the ~200 small eager operations of a step into a few fused kernels.
"""

from __future__ import annotations

import contextlib
import logging
import weakref

import torch

from llmpipe.model.decode import KVCache
from llmpipe.model.gpt import GPT

log = logging.getLogger(__name__)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). temperature 0 means greedy."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# torch.compile settings for CPU generation: the weights are frozen into the graph as constants, so
# inductor can pack them and pick its own C++ GEMM kernels, which spread a one-row product over all
# cores (MKL's sgemv runs on one); with the elementwise work fused, a decode step of the default model
# takes about 2 ms instead of 5 in eager mode on 2 cores. The first compile takes about a minute.
CPU_COMPILE_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _DecodeStep(torch.nn.Module):
    """What gets compiled for cached generation (a class of its own: torch.compile caches per code)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.decode_step(*args)


class _FullStep(_DecodeStep):
    """What gets compiled for generation without a cache: the full forward, last position's logits."""

    def forward(self, idx, pad):
        return self.model(idx, last_only=True, pad=pad)[0][:, -1]


def compiled_step(model: GPT, kind: str):
    """model's decode step ("decode", static shapes) or full forward ("full", dynamic length), compiled
    once per model and weights: frozen weights are constants of the graph, so any change to a parameter
    (an optimizer step, load_state_dict) makes a new compile rather than stale outputs."""
    params = list(model.parameters())
    weights = tuple((p.data_ptr(), p._version) for p in params)
    entry = _compiled.setdefault(model, {})
    if entry.get(kind, (None,))[0] != weights:
        cpu = params[0].device.type == "cpu"
        step = (_DecodeStep if kind == "decode" else _FullStep)(model)
        entry[kind] = (weights, _Compiled(step, kind == "full", CPU_COMPILE_OPTIONS if cpu else {}))
    return entry[kind][1]


class _Compiled:
    """A compiled step, called with the inductor settings it was made for (freezing is read from the
    global config, not from torch.compile's options, when a call compiles). `same_shapes=True` skips
    Dynamo's guard checks (~0.3 ms per call on CPU): only for calls whose inputs have the shapes, dtypes
    and devices of a call already made, such as every decode step of a generation after its first."""

    def __init__(self, step: torch.nn.Module, dynamic: bool, options: dict):
        from torch._inductor import config

        self.step, self.fn = step, torch.compile(step, dynamic=dynamic)
        self.config = config.patch(options)

    def __call__(self, *args, same_shapes: bool = False):
        from torch._dynamo.exc import BackendCompilerFailed

        if self.fn is self.step:
            return self.step(*args)
        if same_shapes:  # nothing can compile here: no settings to apply, no guards to check
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self.fn(*args)
        try:
            with self.config:
                return self.fn(*args)
        except BackendCompilerFailed as err:  # e.g. no C++ compiler on this machine
            log.warning("torch.compile failed, generating in eager mode: %s", str(err).splitlines()[0])
            self.fn = self.step
            return self.step(*args)


@torch.inference_mode()
def generate_batch(model: GPT, prompts: list[list[int]], max_new_tokens: int, eot_id: int | None = None,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                   use_cache: bool = True, on_token=None, stop_fn=None, compile: bool = False,
                   on_logprobs=None) -> list[list[int]]:
    """Generate for several prompts at once (left-padded); each row stops at eot_id (not included).

    on_token(row, token) is called for every token as it is produced (for streaming);
    stop_fn(row, generated_ids) -> True ends that row (stop strings are checked this way).
    on_logprobs(row, token, logprobs) gets, before on_token, the model's log-probabilities over the vocabulary
    (a float32 tensor; the raw distribution, before temperature, top-k and top-p) at the step that chose token.
    compile: run the per-token step through torch.compile (compiled_step); worth it from a few hundred
    tokens on. Eager steps read the weights in the decode layout (GPT.decode_layout)."""
    layout = contextlib.nullcontext() if compile else model.decode_layout()
    with layout:
        return _generate(model, prompts, max_new_tokens, eot_id, temperature, top_k, top_p, seed, use_cache,
                         on_token, stop_fn, compile, on_logprobs)


def _generate(model, prompts, max_new_tokens, eot_id, temperature, top_k, top_p, seed, use_cache, on_token,
              stop_fn, compile, on_logprobs=None) -> list[list[int]]:
    model.eval()
    first = next(model.parameters())
    device, cfg = first.device, model.cfg
    block = cfg.block_size
    filler = eot_id if eot_id is not None else 0
    ctxs = [list(p[-(block - 1):]) or [filler] for p in prompts]
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    full = compiled_step(model, "full") if compile else (lambda i, p: model(i, last_only=True, pad=p)[0][:, -1])
    decode = compiled_step(model, "decode") if compile else None
    decoded = False  # whether a compiled decode step ran: the later ones have its shapes
    slots = torch.arange(block, device=device)
    cache = mask = pad = None
    for _ in range(max_new_tokens):
        if not use_cache or cache is None or cache.pos + 1 > block:
            if use_cache and cache is not None:  # context full: restart from the latest half
                ctxs = [c[-(block // 2):] for c in ctxs]
            window = [c[-block:] for c in ctxs]
            width = max(len(w) for w in window)
            pad_list = [width - len(w) for w in window]
            pad = torch.tensor(pad_list, device=device) if any(pad_list) else None
            idx = torch.tensor([[filler] * p + w for p, w in zip(pad_list, window)], device=device)
            if use_cache:  # prefill, then one step per token
                cache = KVCache(cfg, len(prompts), device, first.dtype)
                logits = model(idx, cache=cache, last_only=True, pad=pad)[0][:, -1]
                if decode is not None:  # the compiled step's view of the cache: filled, not padding
                    first_real = torch.tensor(pad_list, device=device)
                    mask = ((slots[None] >= first_real[:, None]) & (slots[None] < width))[:, None, None]
            else:
                logits = full(idx, pad)
        else:
            idx = torch.tensor([[c[-1]] for c in ctxs], device=device)
            if decode is not None:
                s = cache.pos
                mask[..., s] = True
                local = mask & (slots > s - cfg.attention_window) if cfg.attention_pattern != "dense" else None
                logits = decode(idx, s - first_real, slots[s : s + 1], mask, local, cache.k, cache.v,
                                same_shapes=decoded)
                cache.pos += 1
                decoded = True
            else:  # eager: the forward over the filled part of the cache takes ~12% less than decode_step
                logits = model(idx, cache=cache, last_only=True, pad=pad)[0][:, -1]
        nxt = sample_next(logits, temperature, top_k, top_p, gen).tolist()
        logprobs = torch.log_softmax(logits.float(), dim=-1) if on_logprobs is not None else None
        for row, token in enumerate(nxt):
            ctxs[row].append(token)
            if done[row]:
                continue
            if token == eot_id:
                done[row] = True
                continue
            outs[row].append(token)
            if logprobs is not None:
                on_logprobs(row, token, logprobs[row])
            if on_token is not None:
                on_token(row, token)
            if stop_fn is not None and stop_fn(row, outs[row]):
                done[row] = True
        if all(done):
            break
    return outs


def generate(model: GPT, prompt: list[int], max_new_tokens: int, eot_id: int | None = None,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             use_cache: bool = True, on_token=None) -> list[int]:
    """One prompt; on_token(token) streams."""
    stream = (lambda _row, tok: on_token(tok)) if on_token is not None else None
    return generate_batch(model, [prompt], max_new_tokens, eot_id, temperature, top_k, top_p, seed,
                          use_cache, stream)[0]
