"""Scoring items by log-likelihood, as lm-evaluation-harness 0.4 does, with the shared context computed once.

Per (context, continuation) pair, the tokens are lm-eval's: trailing spaces of the context move to the
continuation, the continuation's tokens are those of encode(context + continuation) after the first
len(encode(context)) (an empty context becomes <|endoftext|>), and a pair longer than the context
window keeps its last block_size + 1 tokens. The score is the summed log-probability of the
continuation's tokens; `greedy` says whether every one was the argmax.

Efficiency: the choices of a multiple-choice item share their context tokens. A batch runs each distinct
context once (left-padded, into a KV cache), copies its cache rows to every continuation that follows it,
and runs all continuations in one more forward pass. A HellaSwag item then costs one context and four
short endings instead of four full sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmpipe.evals.tasks import Item
from llmpipe.model.decode import KVCache


@dataclass
class Scored:
    loglik: list[float]  # per choice: summed log-probability of its continuation
    greedy: list[bool]  # per choice: every continuation token was the argmax
    cont_chars: list[int]  # per choice: characters of the continuation text (acc_norm's length)


def encode_pair(tok, context: str, continuation: str, eot_id: int) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    if not context:
        return [eot_id], tok.encode(continuation, add_special_tokens=False).ids
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    n_ctx = len(tok.encode(context, add_special_tokens=False).ids)
    return whole[:n_ctx], whole[n_ctx:]


def requests(items: list[Item], tok, eot_id: int, block: int) -> list[tuple[int, int, tuple[int, ...], list[int]]]:
    """(item, choice, prefix, continuation) per pair, truncated from the left to block_size + 1 tokens."""
    out = []
    for i, item in enumerate(items):
        for j, (ctx, cont) in enumerate(item.pairs()):
            c, k = encode_pair(tok, ctx, cont, eot_id)
            if not k:
                raise ValueError(f"task {item.task} item {item.id}: choice {j} has no tokens")
            k = k[-block:]  # a continuation longer than the window keeps its end (needs one context token)
            whole = (c + k)[-(block + 1):]
            out.append((i, j, tuple(whole[: len(whole) - len(k)]), k))
    return out


def _batches(groups: list[tuple[tuple[int, ...], list]], max_rows: int, block: int):
    """Groups (prefix, its continuations) in batches of at most max_rows continuations whose longest
    prefix plus longest continuation fits the window. Sorted by longest continuation first: the
    continuations outnumber the contexts, so theirs is the padding that costs."""
    groups = sorted(groups, key=lambda g: (-max(len(r[3]) for r in g[1]), -len(g[0])))
    batch, rows, p_max, k_max = [], 0, 0, 0
    for g in groups:
        gp, gk = len(g[0]), max(len(r[3]) for r in g[1])
        if batch and (rows + len(g[1]) > max_rows or max(p_max, gp) + max(k_max, gk) - 1 > block):
            yield batch
            batch, rows, p_max, k_max = [], 0, 0, 0
        batch.append(g)
        rows, p_max, k_max = rows + len(g[1]), max(p_max, gp), max(k_max, gk)
    if batch:
        yield batch


# autocast for these; float32 and float64 run the model as it is (a float64 model: float64 scores, for
# parity checks finer than float32's resolution)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def _score_rows(model, cache: KVCache, first, pad, width: int, rows: list, device, dtype) -> list:
    """The continuations `rows` ((group, request) pairs) after their contexts' cache rows."""
    owner = torch.tensor([g for g, _ in rows], device=device)
    lengths = torch.tensor([len(r[3]) for _, r in rows], device=device)
    k_max = int(lengths.max())
    targets = torch.tensor([r[3] + [0] * (k_max - len(r[3])) for _, r in rows], device=device)  # (R, k_max)
    logits = first.index_select(0, owner)[:, None]  # (R, 1, V): the first continuation token's distribution
    if k_max > 1:  # the continuations' own tokens after the first, right-padded, on copies of the cache
        conts = KVCache(model.cfg, 0, device, dtype)  # no rows of its own: filled from the contexts' rows
        conts.k = [k.index_select(0, owner) for k in cache.k]
        conts.v = [v.index_select(0, owner) for v in cache.v]
        conts.pos = width
        with torch.autocast(device.type, dtype=dtype, enabled=dtype in LOW_PRECISION):
            rest = model(targets[:, :-1], cache=conts, pad=pad.index_select(0, owner) if bool(pad.any()) else None)[0]
        logits = torch.cat([logits, rest.to(first.dtype)], dim=1)  # (R, k_max, V)
    real = torch.arange(k_max, device=device)[None, :] < lengths[:, None]
    # log-probability of each target without writing a second (R, k_max, V) tensor
    token_lp = logits.gather(2, targets[:, :, None])[:, :, 0] - torch.logsumexp(logits, dim=-1)
    token_lp = token_lp.masked_fill(~real, 0.0).sum(1)
    greedy = ((logits.argmax(-1) == targets) | ~real).all(1)
    return [((r[0], r[1]), ll, g) for (_, r), ll, g in zip(rows, token_lp.tolist(), greedy.tolist())]


@torch.inference_mode()
def _score_batch(model, batch, device, dtype) -> list[tuple[tuple, float, bool]]:
    width = max(len(p) for p, _ in batch)
    pad = torch.tensor([width - len(p) for p, _ in batch], device=device)
    ctx = torch.tensor([[0] * (width - len(p)) + list(p) for p, _ in batch], device=device)
    cache = KVCache(model.cfg, len(batch), device, dtype)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype in LOW_PRECISION):
        first = model(ctx, cache=cache, pad=pad if bool(pad.any()) else None, last_only=True)[0][:, -1]
    first = first.to(torch.float64 if dtype == torch.float64 else torch.float32)
    # The continuations in two passes, shorter half and longer half: the choices of one item differ in
    # length, and padding all to the longest cost about a sixth more tokens on HellaSwag.
    rows = sorted(((g, r) for g, (_, reqs) in enumerate(batch) for r in reqs), key=lambda x: len(x[1][3]))
    halves = [rows[: len(rows) // 2], rows[len(rows) // 2 :]] if len(rows) >= 8 else [rows]
    return [out for half in halves for out in _score_rows(model, cache, first, pad, width, half, device, dtype)]


def score_items(model, tok, items: list[Item], eot_id: int, max_rows: int = 32,
                dtype: torch.dtype = torch.float32) -> list[Scored]:
    """Log-likelihood of every choice of every item; max_rows bounds the continuations per forward pass."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block = model.cfg.block_size
    groups: dict[tuple[int, ...], list] = {}
    for req in requests(items, tok, eot_id, block):
        groups.setdefault(req[2], []).append(req)
    results: dict[tuple[int, int], tuple[float, bool]] = {}
    for batch in _batches(list(groups.items()), max_rows, block):
        for key, ll, greedy in _score_batch(model, batch, device, dtype):
            results[key] = (ll, greedy)
    model.train(was_training)
    out = []
    for i, item in enumerate(items):
        got = [results[(i, j)] for j in range(item.n_choices)]
        out.append(Scored([g[0] for g in got], [g[1] for g in got], item.choice_chars()))
    return out
