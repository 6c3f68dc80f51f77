"""`llmpipe lineage`: the chain of data versions behind a model, from the dvc.lock of the commit that
made it, so anyone can check out that commit and rebuild (or `dvc pull`) exactly that model.

A target is the workspace (no argument), a git revision, an MLflow run id, or a registered model
version `models:/<name>/<version>`; the last two are resolved to the git commit they were tagged with.
The hashes the run recorded itself (tags `dvc.dep.<path>`) pick the commit whose dvc.lock holds them
(the run's own commit, or the first later one that committed its dvc.lock); when none does, the
output says so. A model records its own weights' DVC hash (tag `dvc.out.data/model`) and how it was
trained (`train.*`); when the chosen dvc.lock names other weights (the same data trained on another
machine or in another precision), the output says so instead of presenting that model as this one.

`llmpipe lineage --step N` goes one level down: the documents behind each row of training step N
(llmpipe/ops/step_lineage.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from llmpipe.stages.registry import STAGES
from llmpipe.util import envlock
from llmpipe.util.io import InputError, load_yaml

# The data outputs of the registry's stages: what a model is made of (reports, plots, metrics and
# training state are not lineage).
LINEAGE = {s.name: {o.path for o in s.outputs.values() if o.kind == "data"} for s in STAGES}
CHAIN = [name for name, paths in LINEAGE.items() if paths]
DATA_PATHS = set().union(*LINEAGE.values())


def read_lock(root: Path, commit: str | None = None) -> dict:
    """dvc.lock of the workspace, or as committed at `commit`."""
    if commit is None:
        path = root / "dvc.lock"
        if not path.exists():
            raise InputError(f"{path}: not found (run `dvc repro` first)")
        return load_yaml(path.read_text()) or {}
    proc = subprocess.run(["git", "show", f"{commit}:dvc.lock"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"dvc.lock at {commit}: {proc.stderr.strip() or 'not found'}")
    return load_yaml(proc.stdout) or {}


def resolve_commit(root: Path, rev: str) -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root,
                          capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def chain(lock: dict) -> list[dict]:
    """For each stage from scrape to pretrain: its data outputs (path, md5)."""
    stages = lock.get("stages", {})
    rows = []
    for stage in CHAIN:
        outs = [o for o in stages.get(stage, {}).get("outs", []) if o["path"] in LINEAGE[stage]]
        rows.append({"stage": stage, "outs": [(o["path"], o.get("md5") or o.get("hash", "")) for o in outs]})
    return rows


def render(target: str, commit: str | None, lock: dict, recorded: dict[str, str] | None = None,
           made: dict[str, str] | None = None, trained: dict[str, str] | None = None) -> str:
    """`made`: {out path: md5} of the target's own outputs (its weights); `trained`: how they were made
    (precision, device, CPU kind), from the tags of a run or model version."""
    lines = [f"lineage of {target}" + (f" (git commit {commit})" if commit else " (workspace)")]
    known = outputs(lock)
    others = {path: md5 for path, md5 in (made or {}).items() if known.get(path) != md5}
    for row in chain(lock):
        for i, (path, md5) in enumerate(row["outs"] or [("(not run)", "")]):
            note = "   <- dvc.lock's, not this model's (see below)" if path in others else ""
            lines.append(f"  {row['stage'] if i == 0 else '':10} {path:34} {md5}{note}")
    for path, md5 in sorted((recorded or {}).items()):
        if known.get(path) != md5:
            lines.append(f"  warning: the run recorded {path} {md5}, but this dvc.lock has {known.get(path)}: "
                         f"dvc.lock was not committed after that run")
    for path, md5 in sorted(others.items()):
        how = ", ".join(f"{k} {v}" for k, v in sorted((trained or {}).items())) or "not recorded"
        lines += [f"  warning: this model's {path} is {md5}, but this dvc.lock records {known.get(path)}: the lock "
                  f"names another model, made from the same data on another machine, CPU kind or precision "
                  f"(weights differ between them) or by a run whose dvc.lock was never committed.",
                  f"  this model was trained with: {how}; its own files are the MLflow artifacts of {target}."]
    if commit and others:
        lines.append(f"rebuild: git checkout {commit} && dvc repro pretrain   (retrains on that data; not "
                     f"`dvc pull`, which would fetch the other model)")
    elif commit:
        lines.append(f"rebuild: git checkout {commit} && dvc pull   (or dvc repro, which recomputes)")
    return "\n".join(lines)


def outputs(lock: dict) -> dict[str, str]:
    """path -> md5 of every data output in the chain."""
    return {path: md5 for row in chain(lock) for path, md5 in row["outs"]}


def _matches(lock: dict, recorded: dict[str, str]) -> bool:
    known = outputs(lock)
    return all(known.get(path) == md5 for path, md5 in recorded.items())


def _commit_holding(root: Path, commit: str, recorded: dict[str, str]) -> str | None:
    try:
        if _matches(read_lock(root, commit), recorded):
            return commit
    except InputError:  # the run's commit had no dvc.lock yet (the first run of a new repository)
        pass
    log = subprocess.run(["git", "log", "--reverse", "--format=%H", f"{commit}..HEAD", "--", "dvc.lock"],
                         cwd=root, capture_output=True, text=True)
    for later in log.stdout.split():
        if _matches(read_lock(root, later), recorded):
            return later
    return None


def commit_recording(root: Path, commit: str, recorded: dict[str, str], made: dict[str, str] | None = None) -> str:
    """`commit`, or the first later commit whose dvc.lock holds the hashes the run recorded (a run's
    dvc.lock is usually committed right after it): best one that also holds the run's own outputs."""
    if made and (found := _commit_holding(root, commit, {**recorded, **made})):
        return found
    return _commit_holding(root, commit, recorded) or commit


def environment_note(root: Path, commit: str, tags: dict[str, str]) -> list[str]:
    """Whether the current Python environment is the one that made the target (its env.* tags), and
    which packages differ from the lock file of the target's commit when they are not."""
    made = tags.get("env.lock_sha256")
    now = envlock.environment_tags(root)
    if not made:
        return ["  environment: not recorded (a run from before environments were locked)"]
    if made == now["env.lock_sha256"] and made != "unlocked" and now.get("env.matches_lock") == "true":
        return [f"  environment: the same as now (lock sha256 {made[:12]}, Python {now['env.python']}, "
                f"torch {now['env.torch']})"]
    lines = [f"  warning: the current environment differs from the one that made {tags.get('git.commit', 'it')[:12]}:"
             f" then lock sha256 {made[:12]}, Python {tags.get('env.python')}, torch {tags.get('env.torch')}; "
             f"now lock sha256 {now['env.lock_sha256'][:12]}, Python {now['env.python']}, torch {now['env.torch']}"
             f"{'' if now.get('env.matches_lock', 'true') == 'true' else ', packages not matching it'}"]
    path = tags.get("env.lock", "")
    proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, capture_output=True, text=True) \
        if path.startswith("requirements/") else None
    if proc is None or proc.returncode != 0:
        return lines + ["  (the lock file of that commit is not available: packages cannot be compared)"]
    diff = envlock.differences(envlock.parse(proc.stdout)[0], envlock.installed())
    lines.append(f"  packages that differ ({path} at {commit[:12]} vs this environment): "
                 + ("none" if not diff else str(len(diff))))
    lines += [f"    {line}" for line in diff]
    if diff:
        lines.append(f"  to rebuild that environment: git checkout {commit} && bash scripts/setup.sh")
    return lines


def lineage(root: Path, target: str | None) -> str:
    """The chain for a target (see the module docstring), as printable text."""
    if target is None:
        return render("the workspace", None, read_lock(root))
    commit = resolve_commit(root, target)
    if commit is None:  # not a git revision: an MLflow run or registered model version
        from llmpipe.ops.tracking import recorded_lineage

        commit, recorded, tags = recorded_lineage(root, target)
        env_lines = environment_note(root, commit, tags)
        # a dep that cannot change the weights (pretrain's in-loop benchmark items) is not lineage
        recorded = {path: md5 for path, md5 in recorded.items() if path in DATA_PATHS}
        made = {k.removeprefix("dvc.out."): v for k, v in tags.items() if k.startswith("dvc.out.")}
        trained = {k.removeprefix("train."): v for k, v in tags.items() if k.startswith("train.")}
        commit = commit_recording(root, commit, recorded, made)
        return "\n".join([render(target, commit, read_lock(root, commit), recorded, made, trained), *env_lines])
    return render(target, commit, read_lock(root, commit))


def command(args) -> None:
    if getattr(args, "step", None) is not None:  # the documents behind one training step's rows
        from llmpipe.ops.step_lineage import command as step_command

        if args.target is not None:
            raise InputError("lineage --step reads the workspace's model (--model-dir), not a target")
        return step_command(args)
    print(lineage(args.root, args.target))
