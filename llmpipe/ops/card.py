"""`llmpipe card [MODEL]`: one self-contained HTML page about a model: the data funnel, the tokenizer,
the loss and in-loop benchmark curves, the benchmark and chat-eval tables, samples with the spans found
verbatim in the training data marked, and the lineage (commit, dvc.lock hashes, params that differ from
the defaults, the environment).

MODEL is the workspace's model (default), a registered version `models:/<name>/<version>`, an MLflow
run id or a git revision. For a version or run, the files are the ones its commit's dvc.lock names: the
workspace's where their md5 matches, else DVC's cache; what neither holds is listed as missing. The page
loads nothing (inline CSS and SVG, a Content-Security-Policy that forbids the rest), every number names
the file it came from, and the same inputs give the same bytes. The command logs it to the model's MLflow
run when that run is known (fail-soft).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from llmpipe.ops import card_sections as sections
from llmpipe.ops.card_html import page
from llmpipe.stages.registry import producer_of
from llmpipe.util.io import InputError, file_md5, write_text

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("data/card.html")
CACHE = Path(".dvc/cache/files/md5")
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a large dvc.lock in milliseconds


def _hint(rel: str) -> str:
    name = Path(rel).stem if rel.startswith("data/metrics/") else producer_of(rel)
    return f" (made by the {name} stage: dvc repro {name})" if name else ""


class Inputs:
    """The files a card reads: the workspace's as they are, or (with `hashes`, the {out: md5} of a
    commit's dvc.lock) the versions that lock names. Every file asked for and not found is recorded in
    `missing` with the reason, and None comes back: a card renders what it has."""

    def __init__(self, root: Path, hashes: dict[str, str] | None = None, commit: str | None = None):
        self.root, self.hashes, self.commit = root, hashes, commit
        self.missing: dict[str, str] = {}

    def note(self, rel: str, why: str) -> None:
        self.missing.setdefault(rel, why)

    def _cached(self, md5: str) -> bytes | None:
        path = self.root / CACHE / md5[:2] / md5[2:]
        return path.read_bytes() if path.is_file() else None

    def _md5(self, rel: str) -> str | None:
        if rel in self.hashes:
            return self.hashes[rel]
        for out, md5 in self.hashes.items():  # a file inside a folder out: the folder's listing names it
            if md5.endswith(".dir") and rel.startswith(out + "/") and (listing := self._cached(md5)):
                files = {e["relpath"]: e["md5"] for e in json.loads(listing)}
                return files.get(rel[len(out) + 1:])
        return None

    def read(self, rel: str) -> bytes | None:
        local = self.root / rel
        if self.hashes is None:
            if local.is_file():
                return local.read_bytes()
            self.note(rel, "not found" + _hint(rel))
            return None
        md5 = self._md5(rel)
        if md5 is None:
            self.note(rel, f"not in dvc.lock at {self.commit}")
            return None
        if local.is_file() and file_md5(local) == md5:
            return local.read_bytes()
        if (data := self._cached(md5)) is not None:
            return data
        self.note(rel, f"its version {md5} (dvc.lock at {self.commit}) is neither in the workspace nor in the "
                       "DVC cache: dvc pull fetches it")
        return None

    def json(self, rel: str):
        data = self.read(rel)
        try:
            return None if data is None else json.loads(data)
        except ValueError as err:
            self.note(rel, f"not JSON ({err})")
            return None

    def rows(self, rel: str, jsonl: bool = False) -> list[dict] | None:
        """A TSV (numbers as floats) or a JSONL file as a list of rows."""
        data = self.read(rel)
        if data is None:
            return None
        text = data.decode("utf-8", errors="replace")
        try:
            if jsonl:
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text), delimiter="\t")]
        except ValueError as err:
            self.note(rel, f"unreadable ({err})")
            return None

    def folder(self, rel: str) -> Path | None:
        """A folder on disk (the trace index): the workspace's, when it is the version the lock names."""
        path = self.root / rel
        if not path.is_dir():
            self.note(rel, "not found" + _hint(rel))
            return None
        if self.hashes is not None:
            from llmpipe.util.io import dvc_md5

            if dvc_md5(path) != self.hashes.get(rel):
                self.note(rel, f"the workspace holds another version than dvc.lock at {self.commit} names")
                return None
        return path


def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return value if math.isfinite(value) else text


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _lock_hashes(lock: dict) -> dict[str, str]:
    return {o["path"]: o.get("md5") or o.get("hash", "") for s in (lock.get("stages") or {}).values()
            for o in s.get("outs", []) if o.get("path")}


def resolve(root: Path, params_path: Path, target: str | None) -> tuple[Inputs, dict, str | None, list[str]]:
    """(inputs, what the card is about, params.yaml's text, notes on what is missing)."""
    from llmpipe.ops import lineage

    notes: list[str] = []
    if target is None:
        inputs = Inputs(root)
        lock = yaml.load(inputs.read("dvc.lock") or b"", Loader=LOADER) or {}
        text = params_path.read_text() if params_path.is_file() else None
        if text is None:
            notes.append(f"{params_path.name}: not found")
        head = (_git(root, "rev-parse", "HEAD") or "").strip() or None
        return inputs, {"target": "the workspace", "commit": head, "lock": lock}, text, notes
    about: dict = {"target": target, "commit": None, "lock": {}}
    commit = lineage.resolve_commit(root, target)
    if commit is None:  # an MLflow run or registered model version
        from llmpipe.ops.tracking import model_run

        about["run_id"], tags = model_run(root, target)
        about["tags"] = {k: v for k, v in sorted(tags.items()) if k.startswith(("git.", "dvc.", "train.", "base."))}
        recorded = {k.removeprefix("dvc.dep."): v for k, v in tags.items()
                    if k.startswith("dvc.dep.") and k.removeprefix("dvc.dep.") in lineage.DATA_PATHS}
        made = {k.removeprefix("dvc.out."): v for k, v in tags.items() if k.startswith("dvc.out.")}
        tagged = tags.get("git.commit")
        if tagged and tagged != "unknown" and lineage.resolve_commit(root, tagged):
            commit = lineage.commit_recording(root, tagged, recorded, made)
        else:
            notes.append(f"{target}: its git commit ({tagged or 'no git.commit tag'}) is not in this repository: "
                         "its data files cannot be found")
    about["commit"] = commit
    if commit is None:
        return Inputs(root, {}, "(none)"), about, None, notes
    try:
        about["lock"] = lineage.read_lock(root, commit)
    except InputError as err:
        notes.append(str(err))
    text = _git(root, "show", f"{commit}:params.yaml")
    if text is None:
        notes.append(f"params.yaml at {commit}: not found")
    return Inputs(root, _lock_hashes(about["lock"]), commit), about, text, notes


def changed_params(text: str | None) -> list[tuple[str, str, str]] | str:
    """(key, value, default) for every params leaf that differs from the typed models' defaults, or why
    there are none to show."""
    from llmpipe.ops.tracking import flatten
    from llmpipe.stages.params import Params, parse_params

    if text is None:
        return "params.yaml: not available"
    try:
        values = flatten("", parse_params(yaml.load(text, Loader=LOADER) or {}).model_dump(mode="json"))
    except Exception as err:  # noqa: BLE001 - a card shows what it can: a params file of another version
        why = "; ".join(line.strip() for line in str(err).splitlines()[:4])
        return f"params.yaml does not validate against this version's models ({why})"
    defaults = flatten("", Params().model_dump(mode="json"))
    show = lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False)  # noqa: E731
    return [(k, show(v), show(defaults.get(k))) for k, v in sorted(values.items()) if defaults.get(k) != v]


def environment() -> list[tuple[str, str, str]]:
    """(what, value, where it was read) of the machine building the card."""
    rows = [("python", platform.python_version(), "platform.python_version()")]
    for package in ("llmpipe", "torch", "numpy", "tokenizers", "pydantic", "dvc", "mlflow", "prefect"):
        try:
            rows.append((package, metadata.version(package), "importlib.metadata"))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed", "importlib.metadata"))
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    units = ",".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none (fp32 on CPU)"
    rows += [("CPU", model, "/proc/cpuinfo"), ("CPU bf16 units", units, "/proc/cpuinfo flags")]
    return rows


def build_card(root: Path, params_path: Path, target: str | None = None) -> str:
    """The card's HTML: the same bytes for the same inputs."""
    root = Path(root)
    inputs, about, params_text, notes = resolve(root, Path(params_path), target)
    parts = [
        ("model", "Model", sections.model(inputs, about)),
        ("funnel", "Data funnel", sections.funnel(inputs)),
        ("tokenizer", "Tokenizer", sections.tokenizer(inputs)),
        ("curves", "Training curves", sections.curves(inputs)),
        ("evaluation", "Evaluation", sections.evaluation(inputs)),
        ("samples", "Samples", sections.samples(inputs, root, params_path if target is None else None)),
        ("lineage", "Lineage", sections.lineage(inputs, about, changed_params(params_text), environment())),
    ]
    missing = notes + [f"{rel}: {why}" for rel, why in sorted(inputs.missing.items())]
    where = f"git commit {about['commit']}" if about["commit"] else "no git commit"
    subtitle = f"{about['target']} ({where}); every number names the file it was read from."
    return page(f"Model card: {about['target']}", subtitle, parts, missing)


def _run_to_log(root: Path, params_path: Path, target: str | None) -> str | None:
    from llmpipe.ops import tracking

    if not tracking.tracking_configured(root):
        return None
    if target is not None and not target.startswith("models:/") and len(target) == 32:
        return target  # an MLflow run id
    if target is not None:
        try:
            return tracking.model_run(root, target)[0]
        except InputError:
            return None
    try:
        from llmpipe.config.sections import load_sections

        name = load_sections(params_path, ["tracking"]).tracking.registered_model
        weights = json.loads((root / "data/metrics/pretrain.json").read_text())["model_dvc_md5"]
    except (OSError, ValueError, KeyError, InputError):
        return None
    return tracking.run_of_weights(root, name, weights) if name else None


def command(args) -> None:
    out = args.out if args.out is not None else DEFAULT_OUT
    out = out if out.is_absolute() else args.root / out
    html = build_card(args.root, args.params, args.model)
    write_text(out, html)
    print(f"wrote {out} ({len(html.encode()):,} bytes)")
    run_id = _run_to_log(args.root, args.params, args.model)
    if run_id:
        from llmpipe.ops.tracking import log_artifact_to_run

        if log_artifact_to_run(args.root, run_id, out):
            print(f"logged to MLflow run {run_id} as the artifact {out.name}")
