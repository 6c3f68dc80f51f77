"""The project's import graph, read from the source: every `import` and `from ... import`, inside
functions too (for a stage's DVC code deps, llmpipe.ops.codedeps, and the code hash of a data stage's
shard records, llmpipe.util.resume)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "llmpipe"


def module_file(root: Path, module: str) -> Path | None:
    base = root / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _nodes(tree: ast.AST, typing: bool):
    """The tree's nodes: with `typing` all of them, without it those that can run (the body of
    `if TYPE_CHECKING:` is for type checkers only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not typing and isinstance(child, ast.If) and \
                    getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING":
                todo.extend(child.orelse)
            else:
                todo.append(child)


@cache
def direct_imports(root: Path, module: str, typing: bool = False) -> frozenset[str]:
    """Project modules that `module` imports anywhere in its body (a package's __init__ included):
    at module level and inside functions; with `typing`, also those imported for type checkers only
    (`if TYPE_CHECKING:`), which a code dep leaves out but a dependency between modules counts."""
    path = module_file(root, module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"), str(path)), typing):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, path.name == "__init__.py")
            # `from pkg import name` imports pkg.name when that is a module
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        if path.name == "__init__.py" and "pkgutil" in names:
            # a package that imports pkgutil discovers its modules at run time (the source plug-ins):
            # every module in it is imported, though no import statement names it
            found_here = [p.stem for p in path.parent.glob("*.py") if p.name != "__init__.py"]
            found_here += [p.parent.name for p in path.parent.glob("*/__init__.py")]
            names += [f"{module}.{name}" for name in sorted(found_here)]
        for name in names:
            if (name == PACKAGE or name.startswith(PACKAGE + ".")) and module_file(root, name):
                found.add(name)
    return frozenset(found)


def with_parents(modules: set[str]) -> set[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    out = set(modules)
    for m in modules:
        parts = m.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def closure(root: Path, roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(with_parents(set(direct_imports(root, m)) | {m}) - seen)
    return seen
