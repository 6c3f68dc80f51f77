"""A model's loss on held-out free-text answers: what chat-eval reports for instruction files, whose
answers no exact match can score.

Per conversation, the loss counts the tokens finetuning learns to say (the assistant's content and its
closing <|end|>: the chat format's mask), each predicted from everything before it. Two figures, both
summed over the held-out set before dividing: the mean loss per answer token (nats), and bits per byte,
the summed loss in bits over the UTF-8 bytes of the answers' text, which does not depend on the
tokenizer (the <|end|> marker has no bytes; its loss is counted, so a model that cannot tell where an
answer ends pays for it). The base model, which never saw the chat markers, is the reference: what the
finetuning bought is the drop from its loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmpipe.model.gpt import GPT
from llmpipe.tokens.chat import ChatFormat


@dataclass
class AnswerLoss:
    nats: list[float]  # per conversation: summed loss over its answer tokens
    tokens: list[int]  # per conversation: answer tokens (content and <|end|>)
    bytes: list[int]  # per conversation: UTF-8 bytes of its assistant turns

    @property
    def mean_loss(self) -> float:
        return sum(self.nats) / max(sum(self.tokens), 1)

    @property
    def bits_per_byte(self) -> float:
        return sum(self.nats) / math.log(2) / max(sum(self.bytes), 1)

    def per_item(self) -> list[float]:
        """Each conversation's mean loss per answer token."""
        return [n / max(t, 1) for n, t in zip(self.nats, self.tokens)]


def answer_bytes(messages: list[dict]) -> int:
    return sum(len(m["content"].encode("utf-8")) for m in messages if m["role"] == "assistant")


@torch.no_grad()
def answer_losses(model: GPT, fmt: ChatFormat, conversations: list[dict], batch_size: int = 16) -> AnswerLoss:
    """The loss of `model` on each conversation's assistant turns (a conversation longer than the context
    keeps its last block_size + 1 tokens, and its bytes are then those of the answer tokens it kept)."""
    model.eval()
    device = next(model.parameters()).device
    block = model.cfg.block_size
    rendered = [fmt.render(c["messages"]) for c in conversations]
    rows = [(r.ids[-(block + 1):], r.mask[-(block + 1):]) for r in rendered]
    nats, tokens = [0.0] * len(rows), [0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths share a batch
    for s in range(0, len(order), batch_size):
        batch = order[s : s + batch_size]
        width = max(len(rows[i][0]) for i in batch) - 1
        x = torch.full((len(batch), width), fmt.eot, dtype=torch.long)
        y = torch.full((len(batch), width), fmt.eot, dtype=torch.long)
        select = torch.zeros((len(batch), width), dtype=torch.bool)
        for k, i in enumerate(batch):
            ids, mask = rows[i]
            n = len(ids) - 1
            x[k, :n], y[k, :n] = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
            select[k, :n] = torch.tensor(mask[1:], dtype=torch.bool)
        select = select.to(device)
        logits, _ = model(x.to(device), select=select)
        ce = F.cross_entropy(logits.float(), y.to(device)[select], reduction="none")
        row_of = select.nonzero()[:, 0]
        per_row = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, row_of, ce.double())
        counts = select.sum(dim=1)
        for k, i in enumerate(batch):
            nats[i], tokens[i] = float(per_row[k]), int(counts[k])
    sizes = [answer_bytes(c["messages"]) if len(r.ids) <= block + 1 else kept_answer_bytes(fmt, *rows[i])
             for i, (c, r) in enumerate(zip(conversations, rendered))]
    return AnswerLoss(nats, tokens, sizes)


def kept_answer_bytes(fmt: ChatFormat, ids: list[int], mask: list[bool]) -> int:
    """UTF-8 bytes of the answer tokens a cut conversation kept (the targets ids[1:] its mask selects;
    markers have no bytes)."""
    kept = [t for t, m in zip(ids[1:], mask[1:]) if m]
    return len(fmt.tok.decode(kept, skip_special_tokens=True).encode("utf-8"))
