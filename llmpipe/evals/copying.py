"""In-context copying: can the model read a span back out of its context?

Every question of the demo's assistant set (llmpipe/data/playqa.py) is answered by copying a name or a
line from the passage, which needs induction heads (Olsson et al., 2022: attend to the token after an
earlier occurrence of the current one, and copy it). The demo's base model has none, and no finetuning
variant measured taught it those questions (docs/assistant.md), so evaluate measures the ability directly: a span
of block_size // 2 val tokens is shown twice in a row, and the model's loss and top-1 accuracy on the
second showing are set beside the first. A model that copies predicts the repeat almost perfectly;
one that does not scores both showings alike. Beside them, the copy rule (predict the token that followed
the latest earlier occurrence of the longest suffix seen before) is the trivial rule that reads the
context alone.

That probe repeats at one distance, half the context, and a model can learn to copy from exactly that
far back without matching content: `pretrain.repeat_share`'s rows repeated at the same distance, and
models trained with them scored 0.95-0.97 on the repeat at half the context but 0.20-0.32, as without
copying, at the five other distances measured (16-127 tokens) (docs/assistant.md). So `varied_copy_probe` repeats
spans of lengths spread from block_size // 16 to block_size // 2 - 1, each after natural text: only a
model that finds the earlier occurrence by its content, as the passage questions need, reads those repeats.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llmpipe.model.gpt import GPT


def span_starts(total: int, length: int, count: int) -> list[int]:
    """`count` starts of spans of `length` tokens spread evenly over a stream of `total` (deterministic)."""
    if total < length or count <= 0:
        return []
    return sorted({int(s) for s in np.linspace(0, total - length, count)})


def copy_rule(row: np.ndarray, positions: range, longest: int = 8) -> np.ndarray:
    """For each position t, the token that followed the latest earlier occurrence of the longest
    suffix of row[..t] seen before (up to `longest` tokens; -1 when not even row[t] was): the prediction
    of row[t + 1] that reads the context alone."""
    tokens = row.tolist()
    seen: dict[tuple, int] = {}  # a suffix -> where its latest occurrence ended
    guess = np.full(len(tokens), -1, dtype=np.int64)
    for t in range(len(tokens)):
        suffixes = [tuple(tokens[t - k + 1 : t + 1]) for k in range(1, min(longest, t + 1) + 1)]
        if t in positions:
            match = next((seen[s] for s in reversed(suffixes) if s in seen), None)
            if match is not None:
                guess[t] = tokens[match + 1]
        for s in suffixes:
            seen[s] = t
    return guess


def _scored(model: GPT, rows: np.ndarray, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Per-target loss (nats) and top-1 hit of each row's tokens after its first, `batch_size` rows a pass."""
    losses, hits = [], []
    for b in range(0, len(rows), batch_size):
        x = torch.from_numpy(rows[b : b + batch_size, :-1]).to(device)
        y = torch.from_numpy(rows[b : b + batch_size, 1:]).to(device)
        logits, _ = model(x)
        losses.append(F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").cpu().numpy())
        hits.append((logits.argmax(-1) == y).cpu().numpy())
    return np.concatenate(losses), np.concatenate(hits)


@torch.no_grad()
def copy_probe(model: GPT, stream: np.ndarray, spans: int, batch_size: int = 8) -> dict:
    """Loss (nats per token) and top-1 accuracy on a span's first and second showing, and the copy
    rule's top-1 on the second, over `spans` val spans, `batch_size` rows a forward pass. Targets are
    the span's tokens after its first (the first token of the repeat follows the span's last one, which
    nothing in the span predicts). {} when the context or the stream is too short for a span."""
    length = model.cfg.block_size // 2
    starts = span_starts(len(stream), length, spans) if length >= 2 else []
    if not starts:
        return {}
    model.eval()
    device = next(model.parameters()).device
    rows = np.stack([np.concatenate([stream[s : s + length]] * 2).astype(np.int64) for s in starts])
    loss, top1 = _scored(model, rows, batch_size, device)
    # target j is row[j + 1]: the first showing's are 0..length-2, the repeat's length..2*length-2
    first, second = slice(0, length - 1), slice(length, 2 * length - 1)
    repeat = range(length, 2 * length - 1)
    rule = np.stack([copy_rule(r[:-1], repeat)[second] for r in rows]) == rows[:, 1:][:, second]
    return {"copy_spans": len(starts), "copy_span_tokens": length,
            "copy_first_loss": float(loss[:, first].mean()), "copy_repeat_loss": float(loss[:, second].mean()),
            "copy_gain_nats": float(loss[:, first].mean() - loss[:, second].mean()),
            "copy_first_top1": float(top1[:, first].mean()), "copy_repeat_top1": float(top1[:, second].mean()),
            "copy_rule_top1": float(rule.mean())}


def varied_lengths(block: int, count: int) -> list[int]:
    """Span lengths of the varied probe: `count` of them spread from block // 16 to block // 2 - 1 (never
    the half context at which the other probe, and repeat_share's rows, repeat)."""
    low, high = max(2, block // 16), block // 2 - 1
    return [int(round(v)) for v in np.linspace(low, high, count)] if high >= low else []


def showing_masks(block: int, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(first, repeat): for rows of `block` tokens whose last L are a repeat of the L before them, which
    targets (target j is row[j + 1]) are a showing's tokens after its first: the first showing is
    row[block - 2L : block - L], the repeat row[block - L :]."""
    first, repeat = np.zeros((len(lengths), block - 1), bool), np.zeros((len(lengths), block - 1), bool)
    for i, length in enumerate(lengths):
        first[i, block - 2 * length : block - length - 1] = True
        repeat[i, block - length : block - 1] = True
    return first, repeat


@torch.no_grad()
def varied_copy_probe(model: GPT, stream: np.ndarray, spans: int, batch_size: int = 8) -> dict:
    """Top-1 and loss on the repeat of a val span against its first showing, over `spans` rows of a context's
    length: natural val text, then its last L tokens again, L from `varied_lengths` (one per row, in a
    fixed shuffled order, so that the span's length does not follow its place in the stream). The targets
    are a showing's tokens after its first, as in copy_probe. {} when the stream is too short for them."""
    block = model.cfg.block_size
    spread = varied_lengths(block, spans)
    lengths = [spread[k] for k in np.random.default_rng(0).permutation(len(spread))]
    # the row with the shortest span needs the most text: block - L tokens
    starts = span_starts(len(stream), block - min(lengths), len(lengths)) if lengths else []
    if not lengths or len(starts) < len(lengths):
        return {}
    model.eval()
    device = next(model.parameters()).device
    texts = [stream[s : s + block - length].astype(np.int64) for s, length in zip(starts, lengths)]
    rows = np.stack([np.concatenate([text, text[-length:]]) for text, length in zip(texts, lengths)])
    first, repeat = showing_masks(block, lengths)
    loss, top1 = _scored(model, rows, batch_size, device)
    return {"copy_varied_spans": len(rows), "copy_varied_min_tokens": min(lengths), "copy_varied_max_tokens": max(lengths),
            "copy_varied_first_top1": float(top1[first].mean()), "copy_varied_repeat_top1": float(top1[repeat].mean()),
            "copy_varied_gain_nats": float(loss[first].mean() - loss[repeat].mean())}
