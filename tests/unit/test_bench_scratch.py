"""bench/_root.py's scratch folders: removed when a bench script succeeds, kept and named on stderr when
it fails, however it fails (each case is a real Python process running a real script)."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO

ENDINGS = {  # how main() ends -> (exit code, kept)
    "return": (0, False),
    "sys.exit(0)": (0, False),
    "raise RuntimeError('boom')": (1, True),
    "raise KeyboardInterrupt": (-signal.SIGINT, True),  # Python ends itself by SIGINT, as Ctrl-C would
    "sys.exit('the server did not start')": (1, True),
    "sys.exit(2)": (2, True),
    "_root.keep_scratch('served_ok=0')": (0, True),
}


def script(tmp_path, ending: str) -> list[str]:
    body = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "bench")!r})
        import _root, os, time

        def main():
            path = _root.scratch_dir("bench-test-")
            open(os.path.join(path, "server.log"), "w").write("log")
            print(path, flush=True)
            if {ending!r} == "wait":
                time.sleep(60)
            {ending if ending != "wait" else "return"}

        _root.run_main(main)
        """)
    (tmp_path / "s.py").write_text(body)
    return [sys.executable, str(tmp_path / "s.py")]


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_scratch_folder_goes_on_success_and_stays_named_on_failure(tmp_path, ending):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run(script(tmp_path, ending), capture_output=True, text=True, timeout=60,
                          env={"TMPDIR": str(tmp), "PATH": "/usr/bin:/bin"})
    code, kept = ENDINGS[ending]
    assert proc.returncode == code, proc.stderr
    path = proc.stdout.split()[0]
    assert path.startswith(str(tmp))  # in the temp directory the caller chose
    left = list(tmp.iterdir())
    assert (left != []) == kept, (left, proc.stderr)
    if kept:
        assert f"kept {path}" in proc.stderr and (tmp / path.split("/")[-1] / "server.log").exists()


def test_a_terminated_run_keeps_its_folder_and_names_it(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(script(tmp_path, "wait"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"TMPDIR": str(tmp), "PATH": "/usr/bin:/bin"})
    path = proc.stdout.readline().strip()  # the folder exists and main() is waiting
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert f"kept {path}" in err and list(tmp.iterdir())
