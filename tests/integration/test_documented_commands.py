"""Every documented command runs: each bench/ script starts (`--help`) and, where it can at a smoke size,
runs; the shell commands shown in README.md and docs/**/*.md name subcommands, flags, modules and
scripts that exist, and the cheap, safe ones run. A moved module or a renamed flag fails here, not on
a user's first try."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from llmpipe.cli import build_parser
from llmpipe.ops.codedeps import module_file
from tests.conftest import REPO, clone_repo

BENCH = sorted(p for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))
PROJECT_PACKAGES = ("llmpipe", "flows", "bench", "tests")
# No bench script may import the tests: they are not installed with the project.
IMPORTS_TESTS_FOR_NOW: set[str] = set()


def python_env() -> dict:
    """The environment of a command run here: this checkout's code first, one thread per process."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path = REPO, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**python_env(), **env}, capture_output=True, text=True, timeout=timeout)


def has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


# --- bench/: every script starts; its imports (in functions too) resolve -------------------------

def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (what `from it import name` can take)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def project_imports(script: Path) -> list[tuple[str, str | None]]:
    """(module, name or None) of every project import in the script, inside functions too."""
    out = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.module, a.name) for a in node.names]
    return [(m, n) for m, n in out if m.split(".")[0] in PROJECT_PACKAGES]


def test_bench_imports_resolve_and_none_is_a_test_module():
    """Every project module a bench script imports exists and has the names taken from it; checked from
    the source, so the imports of code paths no smoke run reaches (and of scripts that need data, a GPU
    or the network) are checked too."""
    broken, tests = [], []
    for script in BENCH:
        for module, name in project_imports(script):
            if module.split(".")[0] == "tests":
                tests.append(script.name)
            path = module_file(REPO, module)
            if path is None:
                broken.append(f"{script.name}: no module {module}")
            elif name is not None and name not in top_level_names(path) and not module_file(REPO, f"{module}.{name}"):
                broken.append(f"{script.name}: {module} has no {name}")
    assert not broken, "\n".join(broken)
    assert set(tests) <= IMPORTS_TESTS_FOR_NOW, f"bench scripts importing the tests: {sorted(set(tests))}"


@cache
def bench_help(script: str) -> subprocess.CompletedProcess:
    return run([sys.executable, f"bench/{script}", "--help"], timeout=180)


@pytest.mark.integration
def test_every_bench_script_answers_help():
    """`python bench/X.py --help` exits 0 for every script: it imports all it imports at the top and
    builds its parser. Two at a time (two cores)."""
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(BENCH, pool.map(lambda p: bench_help(p.name), BENCH)))
    bad = {p.name: (r.stdout + r.stderr)[-1500:] for p, r in done.items() if r.returncode != 0 or "usage:" not in r.stdout}
    assert not bad, bad


@pytest.fixture(scope="module")
def bench_repo(tiny_pipeline, tmp_path_factory) -> Path:
    """A copy of the tiny pipeline's repository (its data/ holds every stage's outputs) for the bench
    scripts that read pipeline outputs; the copy keeps the session's pipeline untouched."""
    return clone_repo(tiny_pipeline, tmp_path_factory.mktemp("bench") / "repo")


# script -> its smoke run's arguments: the smallest sizes each script has, seconds each on 2 cores.
# Not run: generate.py (its compiled variants take minutes to compile) and lid.py (its data set comes
# from the npm registry); their imports are checked above and they answer --help. mfu.py: below.
SMOKE = {
    "dedup.py": ["--docs", "300", "--words", "40", "--memory-docs", "400"],
    "filter.py": ["--repeats", "1", "--pages", "3", "--no-udhr", "--max-docs", "2"],
    "bf16_step.py": ["--rounds", "1", "--batch", "1"],
    "step_time.py": ["--ref", "HEAD", "--depths", "1", "--rounds", "1", "--steps", "2", "--threads", "1"],
    "recipe.py": ["--seconds", "0.3", "--seeds", "1", "--only", "wsd", "--eval-tokens", "512"],
    "ladder.py": ["--ratio", "0.001", "--eval-tokens", "512"],
    "copy_warmup.py": ["--copy-steps", "4", "--copy-vocab", "16", "--copy-vocab-steps", "2", "--steps", "3",
                       "--baseline-steps", "2", "--n-layer", "1", "--d-model", "32", "--block", "64",
                       "--eval-bytes", "2048", "--probe-spans", "2", "--tie", "--repeat-share", "0.5",
                       "--periodic-share", "0.5", "--periodic-max", "16", "--periodic-alphabet", "8"],
    "copy_curriculum.py": ["--phases", "3:periodic=1,decay=0.5;2:periodic=0.25,text_periodic=0.5", "--baseline-steps", "2",
                           "--n-layer", "1", "--d-model", "32", "--block", "64", "--pmax", "16", "--alphabet", "8",
                           "--eval-bytes", "2048", "--probe-spans", "2", "--tie", "--threads", "1"],
    "train.py": ["--steps", "10", "--threads", "1", "--eval-tokens", "512"],  # it logs every 10 steps
    "tokenize.py": ["--repeats", "1", "--threads", "1"],  # fetches GPT-2's ranks (an sdist) as scrape does
    "sft.py": [],  # dvc repro chat-eval: up to date in the tiny pipeline's copy, so it reports
    "gguf.py": ["--steps", "2", "--threads", "1"],
    "evals.py": ["--items", "4", "--batch", "8"],
    "serve.py": ["--clients", "2", "--seconds", "1", "--max-tokens", "4"],
    # 3 MB through the six data stages' CLI (one shard each) and a killed-and-resumed tokenize
    "scale.py": ["--gb", "0.003", "--skip-dask", "--skip-demo", "--workdir", "scale-work"],
}
NEEDS = {"gguf.py": ["llama_cpp"], "evals.py": ["lm_eval", "transformers"], "serve.py": ["openai", "llama_cpp"]}


@pytest.mark.integration
@pytest.mark.parametrize("script", list(SMOKE))
def test_bench_script_runs_at_a_smoke_size(bench_repo, script, tmp_path):
    missing = [m for m in NEEDS.get(script, []) if not has(m)]
    if missing:  # under CI (.ci/run installs the dev extra) a missing package is a fault, not a skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs the dev extra ({', '.join(missing)})")
    proc = run([sys.executable, f"bench/{script}", *SMOKE[script]], cwd=bench_repo, TMPDIR=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "RESULT " in proc.stdout.splitlines()[-1], proc.stdout[-2000:]  # it reached its figures
    # a run leaves no scratch folder in the temp directory, but one it names as kept (a failed figure)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(("bench-", "recipe-"))]
    assert all(f"kept {p}" in proc.stderr for p in left), (left, proc.stderr[-2000:])


@pytest.mark.integration
def test_mfu_starts_and_names_what_it_needs():
    """bench/mfu.py measures a GPU: without one it says so and stops; with one it runs two steps."""
    import torch

    if torch.cuda.is_available():
        proc = run([sys.executable, "bench/mfu.py", "--steps", "2", "--micro-batch", "2", "--log-interval", "1",
                    "--no-compile"])
        assert proc.returncode == 0 and "RESULT mfu=" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    else:
        proc = run([sys.executable, "bench/mfu.py", "--steps", "2"])
        assert proc.returncode == 1 and "needs a CUDA device" in proc.stderr, proc.stderr[-2000:]


# --- the commands shown in the documentation ---------------------------------------------------

SHELL_LANGS = {"bash", "sh", "shell", "console", "shell-session"}
NO_CHECK = "<!-- no-check -->"  # on the line before a fence: the block is not checked
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n]*[^\s<>]>|<[A-Za-z]>")  # <repo>, <folder with the task YAML>
SLOT = "PLACEHOLDER"
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
# tools the project installs (its dependencies and extras): a command naming one needs it on PATH
PROVIDED = {"dvc", "mlflow", "prefect", "dask", "torchrun", "lm_eval", "llmpipe"}
# run as shown: cheap, and they write nothing
SAFE = [("llmpipe", "validate"), ("llmpipe", "params"), ("llmpipe", "stages"), ("llmpipe", "dvc-yaml", "--check")]


@dataclass(frozen=True)
class Shown:
    where: str  # file:line
    argv: tuple[str, ...]


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if (root / "docs").is_dir() \
        else [root / "README.md"]


def shell_blocks(text: str):
    """(line number of the block's first line, its lines) of each bash/sh/console block, dedented; a
    block right after the NO_CHECK marker is left out."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], m["indent"]
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        if m["lang"].lower() in SHELL_LANGS and before != NO_CHECK:
            yield i + 2, [line[len(indent):] if line.startswith(indent) else line.strip() for line in lines[i + 1:j]]
        i = j + 1


def strip_comment(line: str) -> str:
    """The line without its shell comment: a # that starts a word, outside quotes."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def logical_lines(first: int, lines: list[str]):
    """(line number, command line) of a block: comments and blank lines dropped, backslash continuations
    joined; in a block with `$ ` prompts only the prompted lines are commands (the rest is output)."""
    prompted = any(line.startswith("$ ") for line in lines)
    pending, start = "", 0
    for n, line in enumerate(lines, first):
        if prompted and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        text = strip_comment(line).strip()
        if not pending and not text:
            continue
        if text.endswith("\\"):
            pending, start = pending + text[:-1] + " ", start or n
            continue
        yield start or n, pending + text
        pending, start = "", 0


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line: split at ; && || | & ( ), without redirections and the
    VAR=value words before a command; placeholders such as <repo> become one word."""
    lex = shlex.shlex(PLACEHOLDER.sub(SLOT, line), posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, ""
    commands, current, target = [], [], False
    for token in lex:
        if target:
            target = False
        elif token in OPERATORS:
            commands.append(current)
            current = []
        elif set(token) <= set("<>&") or re.fullmatch(r"\d[<>]+&?\d*", token):
            target = not token.endswith(("&1", "&2"))  # a redirection: its target is no argument
        else:
            current.append(token)
    commands.append(current)
    out = []
    for words in commands:
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def shown_commands(files: list[Path], root: Path = REPO) -> list[Shown]:
    out = []
    for path in files:
        for first, lines in shell_blocks(path.read_text(encoding="utf-8")):
            for n, line in logical_lines(first, lines):
                out += [Shown(f"{path.relative_to(root)}:{n}", tuple(words)) for words in simple_commands(line)]
    return out


def parses(parse, args: list[str]) -> str | None:
    """None when `parse(args)` accepts them (or prints help), else the parser's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            parse(args)
    except SystemExit as e:
        return None if e.code in (0, None) else (err.getvalue().strip().splitlines() or ["rejected"])[-1]
    except Exception as e:  # noqa: BLE001 - dvc's parser raises its own error type
        return (err.getvalue().strip().splitlines() or [f"{type(e).__name__}: {e}"])[-1]
    return None


def check_llmpipe(args: list[str]) -> str | None:
    parser = build_parser()
    if args and args[0] == SLOT:  # `llmpipe <stage> ...`: every subcommand takes the rest
        sub = next(a for a in parser._actions if a.dest == "command")
        bad = [c for c in sub.choices if parses(parser.parse_args, [c, *args[1:]])]
        return f"not accepted by {bad}" if bad else None
    return parses(parser.parse_args, ["1" if a == SLOT else a for a in args])


def check_dvc(args: list[str]) -> str | None:
    from dvc.cli import parse_args

    return parses(parse_args, ["1" if a == SLOT else a for a in args])


def check_bench(script: str, args: list[str]) -> str | None:
    if not (REPO / script).is_file():
        return f"{script} does not exist"
    proc = bench_help(Path(script).name)
    if proc.returncode != 0:
        return f"{script} --help failed: {proc.stderr[-500:]}"
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", proc.stdout))
    flags = [a.strip("[]").split("=")[0] for a in args if a.strip("[]").startswith("-")]
    unknown = [f for f in flags if not re.fullmatch(r"-\d[\d.]*", f) and f not in known]
    return f"{script} has no option {unknown}" if unknown else None


def check(argv: tuple[str, ...]) -> str | None:
    """What is wrong with a documented command, or None. Commands of tools outside the project (git,
    pip, llama-cli, ollama, ...) are not checked."""
    prog, args = argv[0], list(argv[1:])
    if prog == "llmpipe":
        return check_llmpipe(args)
    if prog == "dvc":
        return check_dvc(args)
    if prog in ("python", "python3") and args[:1] == ["-m"] and len(args) > 1:
        return check_llmpipe(args[2:]) if args[1] == "llmpipe.cli" else \
            (None if module_file(REPO, args[1]) or has(args[1]) else f"no module {args[1]}")
    if prog in ("python", "python3") and args and args[0].endswith(".py"):
        if args[0].startswith("bench/"):
            return check_bench(args[0], args[1:])
        return None if (REPO / args[0]).is_file() else f"{args[0]} does not exist"
    if prog in ("bash", "sh", "source", ".") and args and "/" in args[0]:
        return None if (REPO / args[0]).is_file() else f"{args[0]} does not exist"
    if prog == "torchrun" and "-m" in args:
        module, rest = args[args.index("-m") + 1], args[args.index("-m") + 2:]
        return check_llmpipe(rest) if module == "llmpipe.cli" else check(("python", "-m", module))
    if prog in PROVIDED and not shutil.which(prog):
        return f"{prog} is not installed"
    return None


def test_collector_reads_blocks_as_a_shell_would(tmp_path):
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    doc.write_text("Text `llmpipe nosuch` outside blocks is not read.\n"
                   "```bash\n# a comment\nllmpipe generate \"A # B\" --top-k 5   # trailing\n"
                   "dvc repro; dvc metrics show && HF_HUB_OFFLINE=1 lm_eval --model hf > out.txt\n"
                   "llmpipe export --format hf \\\n    exported/\ngit clone <repo> && cd llmpipe\n```\n"
                   "<!-- no-check -->\n```sh\nllmpipe nosuch\n```\n"
                   "```console\n$ python -m flows.pipeline\nsome output\n```\n"
                   "1. In a list:\n    ```bash\n    bash scripts/test.sh\n    ```\n"
                   "```python\nprint('not shell')\n```\n")
    (tmp_path / "README.md").write_text("")
    shown = shown_commands(doc_files(tmp_path), tmp_path)
    assert [s.argv for s in shown] == [
        ("llmpipe", "generate", "A # B", "--top-k", "5"), ("dvc", "repro"), ("dvc", "metrics", "show"),
        ("lm_eval", "--model", "hf"), ("llmpipe", "export", "--format", "hf", "exported/"),
        ("git", "clone", SLOT), ("cd", "llmpipe"), ("python", "-m", "flows.pipeline"), ("bash", "scripts/test.sh")]
    assert [s.where for s in shown][:2] == ["docs/page.md:4", "docs/page.md:5"]
    assert check(("llmpipe", "generate", "A", "--top-k", "5")) is None
    assert "--top-q" in check(("llmpipe", "generate", "A", "--top-q", "5"))
    assert check(("llmpipe", "nosuch")) and check(("dvc", "nosuch")) and check(("dvc", "repro", "--nosuch"))
    assert check(("llmpipe", SLOT, "--help")) is None and check(("dvc", "exp", "run", "-S", "a.b=1")) is None
    assert check(("python", "-m", "flows.nosuch")) and check(("bash", "scripts/nosuch.sh"))


def test_every_documented_command_exists_with_its_flags():
    shown = shown_commands(doc_files())
    programs = {s.argv[0] for s in shown}
    assert {"llmpipe", "dvc", "bash", "python"} <= programs, programs  # the collector found the README's blocks
    bad = [f"{s.where}: {' '.join(s.argv)}: {problem}" for s in shown if (problem := check(s.argv))]
    assert not bad, "\n".join(bad)
    modules = sorted({s.argv[2] for s in shown if s.argv[:2] == ("python", "-m") and s.argv[2].startswith("flows.")})
    if modules:  # `python -m flows.X`: the module imports (Prefect and all), in a process of its own
        proc = run([sys.executable, "-c", "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]",
                    *modules])
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_cheap_safe_commands_run_as_shown():
    """`llmpipe --help`, `llmpipe <sub> --help` for each subcommand the documentation shows,
    `dvc --version`, and documented commands that only read (SAFE, or ending in --help/--version)."""
    shown = shown_commands(doc_files())
    subs = sorted({s.argv[1] for s in shown if s.argv[0] == "llmpipe" and len(s.argv) > 1 and s.argv[1] != SLOT
                   and not s.argv[1].startswith("-")})
    commands = [["llmpipe", "--help"], *(["llmpipe", sub, "--help"] for sub in subs), ["dvc", "--version"]]
    commands += [list(s.argv) for s in shown if SLOT not in s.argv and (
        s.argv[-1] in ("--help", "-h", "--version") and s.argv[0] in ("llmpipe", "dvc")
        or any(s.argv[:len(safe)] == safe for safe in SAFE))]
    unique = list(dict.fromkeys(map(tuple, commands)))
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda argv: run(list(argv), timeout=120), unique))
    bad = {" ".join(argv): p.stderr[-800:] for argv, p in zip(unique, procs) if p.returncode != 0}
    assert not bad, bad
    assert "generate" in procs[0].stdout and "usage: llmpipe" in procs[0].stdout
