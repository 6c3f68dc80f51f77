"""The architecture, checked: layers and cycles in the import graph, module size, and the files that
are generated from one source (dvc.yaml from the stage registry, params.yaml from the typed config)."""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from pathlib import Path

import yaml

from llmpipe.cli import COMMANDS, build_parser
from llmpipe.config.sections import SECTIONS
from llmpipe.ops.codedeps import code_deps, direct_imports
from llmpipe.ops.dvcgen import render
from llmpipe.stages.registry import STAGES, check, stage

REPO = Path(__file__).resolve().parents[2]
# Low to high: a module imports only from its own layer or lower ones.
LAYERS = [("llmpipe", "llmpipe.config", "llmpipe.util"), ("llmpipe.data",), ("llmpipe.tokens",),
          ("llmpipe.model",), ("llmpipe.evals",), ("llmpipe.training",), ("llmpipe.stages",), ("llmpipe.ops", "llmpipe.cli")]
MAX_LINES = 400


def modules(root: Path = REPO) -> list[str]:
    out = []
    for path in sorted((root / "llmpipe").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def imports(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the project modules it imports: at module level, inside functions, and for type
    checkers only (an `if TYPE_CHECKING:` import is a dependency between the two modules too)."""
    return {m: set(direct_imports(root, m, typing=True)) - {m} for m in modules(root)}


def layer(module: str) -> int:
    best = max((p for group in LAYERS for p in group if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group)


def test_lower_layers_never_import_higher_ones():
    bad = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in imports().items() for d in deps
           if layer(d) > layer(m)]
    assert not bad, "\n".join(bad)


def shortest_path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """The shortest import path from `start` to `goal` (breadth first), or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        m = queue.popleft()
        if m == goal:
            path = [m]
            while (before := came_from[path[-1]]) is not None:
                path.append(before)
            return path[::-1]
        for d in sorted(graph.get(m, ())):
            if d not in came_from:
                came_from[d] = m
                queue.append(d)
    return None


def import_cycles(root: Path = REPO) -> list[str]:
    """For every import that lies on a cycle, the shortest such cycle, once each, written from its
    smallest module: `a -> b -> a`."""
    graph = imports(root)
    cycles = set()
    for m, deps in graph.items():
        for d in deps:
            if back := shortest_path(graph, d, m):
                ring = [m] + back[:-1]
                first = ring.index(min(ring))
                ring = ring[first:] + ring[:first]
                cycles.add(" -> ".join(ring + ring[:1]))
    return sorted(cycles)


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles between modules:\n" + "\n".join(cycles)


def test_cycle_check_sees_imports_in_functions_and_for_type_checkers(tmp_path):
    """Two modules tied only by an import inside a function one way and an `if TYPE_CHECKING:` import
    the other way are a cycle."""
    def tree(root: Path, low: str) -> Path:
        pkg = root / "llmpipe" / "part"
        pkg.mkdir(parents=True)
        for init in (root / "llmpipe" / "__init__.py", pkg / "__init__.py"):
            init.write_text("")
        (pkg / "low.py").write_text(low + "class Base: ...\n")
        (pkg / "high.py").write_text("def make():\n    from llmpipe.part.low import Base\n    return Base()\n")
        return root

    tied = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmpipe.part.high import make\n"
    assert import_cycles(tree(tmp_path / "tied", tied)) == [
        "llmpipe.part.high -> llmpipe.part.low -> llmpipe.part.high"]
    assert import_cycles(tree(tmp_path / "untied", "")) == []


def test_config_and_data_layers_do_not_need_torch():
    for m in modules():
        if layer(m) <= layer("llmpipe.data"):
            src = (REPO / Path(*m.split("."))).with_suffix(".py")
            src = src if src.exists() else REPO / Path(*m.split(".")) / "__init__.py"
            assert "import torch" not in src.read_text(), m


def test_modules_stay_short():
    long = [f"{p.relative_to(REPO)}: {n}" for p in (REPO / "llmpipe").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_registry_is_consistent_and_sections_exist():
    check()
    for s in STAGES:
        assert set(s.params) | set(s.settings) <= set(SECTIONS), s.name
        assert (REPO / Path(*s.module.split("."))).with_suffix(".py").exists(), s.module


def test_dvc_yaml_is_what_the_registry_generates():
    assert (REPO / "dvc.yaml").read_text() == render(REPO), "dvc.yaml is stale: run `llmpipe dvc-yaml`"


def test_code_deps_are_exact_and_tight():
    """The deps that were missing by hand are there (imports inside functions included), and a stage
    never depends on code it cannot run."""
    deps = {s.name: set(code_deps(REPO, s)) for s in STAGES}
    assert {"llmpipe/tokens/split.py"} <= deps["tokenizer"]
    assert {"llmpipe/tokens/loader.py", "llmpipe/tokens/shards.py"} <= deps["pretrain"]
    assert {"llmpipe/model/gpt.py", "llmpipe/model/weights.py", "llmpipe/tokens/loader.py",
            "llmpipe/tokens/bpe.py", "llmpipe/training/evaluate.py"} <= deps["evaluate"]
    assert {"llmpipe/model/gpt.py", "llmpipe/model/decode.py", "llmpipe/model/weights.py"} <= deps["sample"]
    for name, d in deps.items():
        assert {"llmpipe/cli.py", "llmpipe/ops/shell.py", "llmpipe/config/sections.py",
                "llmpipe/util/io.py", stage(name).module.replace(".", "/") + ".py"} <= d, name
        assert "llmpipe/ops/tracking.py" not in d  # writes to MLflow, never to an output
    assert not any(p.startswith(("llmpipe/model/", "llmpipe/training/")) for p in deps["scrape"] | deps["filter"])
    assert "llmpipe/config/pretrain.py" not in deps["scrape"] | deps["dedup"] | deps["tokenize"]
    assert not any(p.startswith("llmpipe/data/") for p in deps["pretrain"])


def test_params_yaml_holds_every_leaf_with_its_value():
    proc = subprocess.run([sys.executable, "-m", "llmpipe.cli", "--root", str(REPO), "params"],
                          capture_output=True, text=True, check=True)
    shown = yaml.safe_load(proc.stdout)
    written = yaml.safe_load((REPO / "params.yaml").read_text())

    def leaves(node, prefix=""):
        if isinstance(node, dict) and node:
            return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}
        if isinstance(node, list) and node and any(isinstance(x, dict) for x in node):
            return {k: v for i, child in enumerate(node) for k, v in leaves(child, f"{prefix}{i}.").items()}
        return {prefix.rstrip("."): node}

    assert leaves(written) == leaves(shown)
    assert len(leaves(shown)) > 120


def test_cli_table_parser_and_readme_agree():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {s.name for s in STAGES} | set(COMMANDS)
    readme = (REPO / "README.md").read_text()
    missing = [c for c in list(COMMANDS) + [s.name for s in STAGES] if f"llmpipe {c}" not in readme]
    assert not missing, f"README does not show: {missing}"
    for name, (_, target) in COMMANDS.items():
        module, function = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), name
    assert stage("pretrain").inp("tokens") == Path("data/tokens")
