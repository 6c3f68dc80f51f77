"""scripts/uv.sh, the installer behind scripts/setup.sh and scripts/lock.sh: it puts uv at requirements/uv.txt's
version, hash-checked, into a directory of its own per version, installs it once, and refuses a wheel whose
hash differs, naming the file and leaving nothing behind."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def bootstrap(tree: Path, tools: Path) -> subprocess.CompletedProcess:
    script = f'source "{tree}/scripts/uv.sh" && llmpipe_uv && echo "UV=$UV" && "$UV" --version'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tools.parent)),
                               "LLMPIPE_LOCK_TOOLS": str(tools)})


def copy_tree(dest: Path, uv_txt: str) -> Path:
    (dest / "scripts").mkdir(parents=True)
    (dest / "requirements").mkdir()
    shutil.copy(REPO / "scripts" / "uv.sh", dest / "scripts" / "uv.sh")
    (dest / "requirements" / "uv.txt").write_text(uv_txt)
    return dest


def test_uv_is_installed_once_at_the_pinned_version_and_a_wrong_hash_is_refused(tmp_path):
    pinned = (REPO / "requirements" / "uv.txt").read_text()
    version = next(line.split("==")[1].split()[0] for line in pinned.splitlines() if line.startswith("uv=="))
    tools = tmp_path / "tools"
    ok = bootstrap(copy_tree(tmp_path / "good", pinned), tools)
    assert ok.returncode == 0, ok.stderr
    assert f"UV={tools}/uv-{version}/bin/uv" in ok.stdout and f"uv {version} " in ok.stdout
    marker = tools / f"uv-{version}" / "pyvenv.cfg"
    before = marker.stat()
    # a second call finds it in place: nothing is rebuilt
    again = bootstrap(tmp_path / "good", tools)
    assert again.returncode == 0, again.stderr
    after = marker.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tools.iterdir()] == [f"uv-{version}"]  # no build directory left behind

    tampered = "\n".join(line.replace(line.split("sha256:")[1][:8], "00000000") if "sha256:" in line else line
                         for line in pinned.splitlines())
    bad = bootstrap(copy_tree(tmp_path / "bad", tampered), tmp_path / "tools2")
    assert bad.returncode != 0
    assert "DO NOT MATCH THE HASHES" in bad.stderr  # refused for its hash, not for want of a network
    assert "could not install uv" in bad.stderr and "requirements/uv.txt" in bad.stderr
    assert list((tmp_path / "tools2").iterdir()) == []
