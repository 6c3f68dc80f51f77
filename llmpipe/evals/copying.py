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
    losses, hits = [], []
    for b in range(0, len(rows), batch_size):
        x = torch.from_numpy(rows[b : b + batch_size, :-1]).to(device)
        y = torch.from_numpy(rows[b : b + batch_size, 1:]).to(device)
        logits, _ = model(x)
        losses.append(F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").cpu().numpy())
        hits.append((logits.argmax(-1) == y).cpu().numpy())
    loss, top1 = np.concatenate(losses), np.concatenate(hits)
    # target j is row[j + 1]: the first showing's are 0..length-2, the repeat's length..2*length-2
    first, second = slice(0, length - 1), slice(length, 2 * length - 1)
    repeat = range(length, 2 * length - 1)
    rule = np.stack([copy_rule(r[:-1], repeat)[second] for r in rows]) == rows[:, 1:][:, second]
    return {"copy_spans": len(starts), "copy_span_tokens": length,
            "copy_first_loss": float(loss[:, first].mean()), "copy_repeat_loss": float(loss[:, second].mean()),
            "copy_gain_nats": float(loss[:, first].mean() - loss[:, second].mean()),
            "copy_first_top1": float(top1[:, first].mean()), "copy_repeat_top1": float(top1[:, second].mean()),
            "copy_rule_top1": float(rule.mean())}
