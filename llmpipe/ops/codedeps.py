"""The project modules a stage's process can import: its code deps in dvc.yaml, computed, not written.

The import graph is read from the source (every `import` and `from ... import`, inside functions
too), so no code change can leave a stale output cached. A stage's process runs the CLI, the uniform
stage shell and the stage module, and the shell imports the params models of the stage's own sections
by name (llmpipe.config.sections): those are the roots. The tracking module is left out: it writes to
MLflow, never to an output; so is what only it reads for its tags (the environment lock's hash).
"""

from __future__ import annotations

from pathlib import Path

from llmpipe.util.imports import PACKAGE, closure, direct_imports, module_file, with_parents  # noqa: F401

NOT_CODE_DEPS = {"llmpipe.ops.tracking", "llmpipe.util.envlock"}
SHELL_ROOTS = ["llmpipe.cli", "llmpipe.ops.shell"]


def stage_roots(stage) -> list[str]:
    from llmpipe.config.sections import section_module

    # the shell reads tracking too
    sections = [section_module(s) for s in (*stage.params, *stage.settings, "tracking")]
    return [*SHELL_ROOTS, stage.module, *sections]


def stage_modules(root: Path, stage) -> set[str]:
    return closure(root, stage_roots(stage)) - NOT_CODE_DEPS


def code_deps(root: Path, stage) -> list[str]:
    """The stage's code deps as repository paths, sorted."""
    return sorted(str(module_file(root, m).relative_to(root)) for m in stage_modules(root, stage))
