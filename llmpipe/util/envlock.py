"""The locked Python environment: requirements/{runtime,dev}.lock, made by scripts/lock.sh (uv) with an
exact version and hashes for every package, installed exactly by scripts/setup.sh.

Standard library only: setup.sh runs this file as a script before llmpipe is installed
(`python llmpipe/util/envlock.py preflight|check|extras LOCK`).
"""

from __future__ import annotations

import hashlib
import platform
import re
import sys
import sysconfig
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

REFRESH = "bash scripts/lock.sh"
# Installed by setup.sh outside the lock: the installer itself and this project (editable).
UNLOCKED = {"pip", "llmpipe"}
# What a venv brings along; not a difference when the lock does not name them.
VENV_SEED = {"setuptools", "wheel"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_HEADER = re.compile(r"^# (python|platform): (\S+)")
_BLANK_LINE = re.compile(r"\r?\n\r?\n")  # where a metadata file's header ends and its description begins


def normalize(name: str) -> str:
    """PEP 503's form: `ruamel.yaml`, `Ruamel_YAML` and `ruamel-yaml` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """({package: version}, header {python, platform}) of a lock's text."""
    pins, header = {}, {}
    for line in text.splitlines():
        if m := _PIN.match(line):
            pins[normalize(m.group(1))] = m.group(2)
        elif m := _HEADER.match(line):
            header[m.group(1)] = m.group(2)
    return pins, header


def installed() -> dict[str, str]:
    """{package: version} of the running interpreter's environment: what its site-packages hold. Not
    metadata.distributions() over sys.path: once setuptools is imported, its _vendor folder is on
    sys.path and its vendored copies (older packaging, zipp, jaraco...) would count as installed."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found = {}
    for dist in metadata.distributions(path=paths):
        name, version = name_and_version(dist)
        if name:
            found[normalize(name)] = version
    return found


def name_and_version(dist: metadata.Distribution) -> tuple[str | None, str | None]:
    """Name and Version as importlib.metadata gives them, parsed from the metadata's header only.
    `dist.metadata` hands the whole file (long description included) to the email parser, and
    `dist.version` parses it again: 0.33 s over this venv on a 2-core AVX2-only EPYC, paid twice by
    every stage's start. The same files in the same order as importlib (METADATA, PKG-INFO, a legacy
    .egg-info file), and the same parser, so folded lines and the headers' letter case read alike."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or dist.read_text("")
    if text is None:
        return None, None
    header = HeaderParser().parsestr(_BLANK_LINE.split(text, maxsplit=1)[0])
    return header["Name"], header["Version"]


def this_platform() -> tuple[str, str]:
    """(python version, platform) in the form scripts/lock.sh writes into a lock's header."""
    return platform.python_version(), f"{sys.platform}-{platform.machine()}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def platform_problems(text: str, python: str | None = None, plat: str | None = None) -> list[str]:
    """Why a lock cannot install here: it was resolved for another Python (major.minor) or platform."""
    _, header = parse(text)
    here_py, here_plat = this_platform()
    python, plat = python or here_py, plat or here_plat
    problems = []
    if "python" not in header:
        problems.append("the lock has no `# python:` header line (it was not made by scripts/lock.sh)")
    elif header["python"].split(".")[:2] != python.split(".")[:2]:
        problems.append(f"the lock was resolved for Python {header['python']}, this is Python {python}")
    if header.get("platform") and header["platform"] != plat:
        problems.append(f"the lock was resolved for {header['platform']}, this is {plat}")
    return problems


def differences(locked: dict[str, str], present: dict[str, str]) -> list[str]:
    """One line per package whose installed version is not the locked one (or that only one side has)."""
    lines = []
    for name in sorted(set(locked) | set(present)):
        if name in UNLOCKED or (name in VENV_SEED and name not in locked):
            continue
        want, have = locked.get(name), present.get(name)
        if want == have:
            continue
        if have is None:
            lines.append(f"{name}: locked {want}, not installed")
        elif want is None:
            lines.append(f"{name}: installed {have}, not in the lock")
        else:
            lines.append(f"{name}: locked {want}, installed {have}")
    return lines


def extras(locked: dict[str, str], present: dict[str, str]) -> list[str]:
    """Installed packages the lock does not name (setup.sh uninstalls them: the venv is the lock, no more)."""
    return sorted(n for n in present if n not in locked and n not in UNLOCKED and n not in VENV_SEED)


def installed_lock() -> Path:
    """The copy of the lock setup.sh installed this environment from."""
    return Path(sys.prefix) / "llmpipe-env.lock"


def environment_tags(root: Path) -> dict[str, str]:
    """What an MLflow run records of its environment: the installed lock's hash, which of the repository's
    locks that is, whether the packages still match it, the Python and torch versions."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    tags = {"env.python": platform.python_version(), "env.torch": torch}
    copy = installed_lock()
    if not copy.is_file():  # not made by scripts/setup.sh
        return {**tags, "env.lock_sha256": "unlocked", "env.lock": "none"}
    digest = sha256(copy)
    named = [f"requirements/{kind}.lock" for kind in ("dev", "runtime")
             if (root / "requirements" / f"{kind}.lock").is_file() and sha256(root / "requirements" / f"{kind}.lock") == digest]
    drift = differences(parse(copy.read_text())[0], installed())
    return {**tags, "env.lock_sha256": digest, "env.lock": named[0] if named else "not this checkout's",
            "env.matches_lock": "true" if not drift else f"false ({len(drift)} packages differ)"}


def mismatch_report(lock: Path, lines: list[str]) -> str:
    return (f"the environment ({sys.prefix}) does not match {lock}:\n  " + "\n  ".join(lines) +
            f"\nreinstall it: bash scripts/setup.sh (or LLMPIPE_EXTRAS=dev ...); if the lock is what is out of date "
            f"(pyproject.toml changed), refresh it: {REFRESH}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("preflight", "check", "extras"):
        print("usage: envlock.py preflight|check|extras LOCK", file=sys.stderr)
        return 2
    cmd, lock = argv[0], Path(argv[1])
    if not lock.is_file():
        print(f"[setup] {lock}: not found; make it with: {REFRESH}", file=sys.stderr)
        return 1
    text = lock.read_text()
    if cmd == "preflight":
        if problems := platform_problems(text):
            print(f"[setup] {lock} does not fit this machine: " + "; ".join(problems) +
                  f".\n[setup] refresh the lock on this platform: {REFRESH}", file=sys.stderr)
            return 1
        return 0
    locked, _ = parse(text)
    if cmd == "extras":
        for name in extras(locked, installed()):  # one per line; nothing at all when none (setup.sh's mapfile)
            print(name)
        return 0
    if lines := differences(locked, installed()):
        print("[setup] " + mismatch_report(lock, lines), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
