"""scripts/uv.sh, the installer behind scripts/setup.sh and scripts/lock.sh: it puts uv at requirements/uv.txt's
version, hash-checked, into its own venv, and refuses a wheel whose hash differs, naming the file."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def bootstrap(tree: Path, tools: Path) -> subprocess.CompletedProcess:
    script = f'source "{tree}/scripts/uv.sh" && llmpipe_uv && "$UV" --version'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tools.parent)),
                               "LLMPIPE_LOCK_TOOLS": str(tools)})


def copy_tree(dest: Path, uv_txt: str) -> Path:
    (dest / "scripts").mkdir(parents=True)
    (dest / "requirements").mkdir()
    shutil.copy(REPO / "scripts" / "uv.sh", dest / "scripts" / "uv.sh")
    (dest / "requirements" / "uv.txt").write_text(uv_txt)
    return dest


def test_uv_is_installed_at_the_pinned_version_and_a_wrong_hash_is_refused(tmp_path):
    pinned = (REPO / "requirements" / "uv.txt").read_text()
    version = next(line.split("==")[1].split()[0] for line in pinned.splitlines() if line.startswith("uv=="))
    ok = bootstrap(copy_tree(tmp_path / "good", pinned), tmp_path / "tools")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(f"uv {version}")
    # a second call finds it in place (no reinstall: the venv's python is not even needed)
    (tmp_path / "tools" / "bin" / "python").rename(tmp_path / "tools" / "bin" / "python.moved")
    assert bootstrap(tmp_path / "good", tmp_path / "tools").returncode == 0

    tampered = "\n".join(line.replace(line.split("sha256:")[1][:8], "00000000") if "sha256:" in line else line
                         for line in pinned.splitlines())
    bad = bootstrap(copy_tree(tmp_path / "bad", tampered), tmp_path / "tools2")
    assert bad.returncode != 0
    assert "could not install uv" in bad.stderr and "requirements/uv.txt" in bad.stderr
    assert not (tmp_path / "tools2" / "bin" / "uv").exists()
