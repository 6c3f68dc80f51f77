"""The architecture, checked: layers and cycles in the import graph, module size, and the files that
are generated from one source (dvc.yaml from the stage registry, params.yaml from the typed config)."""

from __future__ import annotations

import subprocess
import sys
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


def modules() -> list[str]:
    out = []
    for path in sorted((REPO / "llmpipe").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def layer(module: str) -> int:
    best = max((p for group in LAYERS for p in group if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group)


def test_lower_layers_never_import_higher_ones():
    bad = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m in modules() for d in direct_imports(REPO, m)
           if layer(d) > layer(m)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: set(direct_imports(REPO, m)) - {m} for m in modules()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


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
