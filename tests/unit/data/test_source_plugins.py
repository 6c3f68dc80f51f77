"""A new kind of source is one new file in llmpipe/data/sources/: no other module names the kinds.

The test copies the llmpipe package, drops a `lines` kind module into the copy's sources package, and
runs a fresh interpreter on the copy: the real discovery finds the kind, params.yaml validates with
`kind: lines` (and reports its errors by key), the scrape stage core reads it, and the stage's dvc.yaml
code deps list the new file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import llmpipe
from llmpipe.data.sources import KINDS

LINES_KIND = '''"""Kind `lines`: one document per non-blank line of text files, a file per task."""

from __future__ import annotations

import os
from typing import Literal

from llmpipe.config.base import Section
from llmpipe.data.sources.documents import Skip, glob_files, make_doc


class LinesSource(Section):
    kind: Literal["lines"] = "lines"
    paths: list[str]


PARAMS = LinesSource


def plan(source, cfg, root):
    return [(os.path.relpath(f, root),) for f in glob_files(source.paths, root)] or [()]


def read(source, files, cfg, root):
    for rel in files:
        for n, line in enumerate((root / rel).read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                yield make_doc(f"lines/{rel}:{n}", "lines", line, line.encode("utf-8"), path=rel)
            else:
                yield Skip("blank_line", f"{rel}:{n}")
'''

SCRIPT = '''
import json
from pathlib import Path

import pyarrow.parquet as pq

from llmpipe.config.base import ParamsError
from llmpipe.config.sections import load_sections
from llmpipe.data.sources import KINDS, plan_units
from llmpipe.ops.codedeps import code_deps
from llmpipe.stages import scrape
from llmpipe.stages.registry import stage

root = Path.cwd()
try:
    load_sections("bad.yaml", ["scrape"])
    error = None
except ParamsError as err:
    error = str(err)
params = load_sections("params.yaml", ["scrape", "scale"])
units = plan_units(params.scrape, root)
result = scrape.run(params, root)
rows = pq.read_table(root / "data/scrape/docs").to_pylist()
print(json.dumps({
    "kinds": sorted(KINDS), "module": KINDS["lines"].__file__, "error": error,
    "units": [list(u.files) for u in units], "metrics": result.metrics,
    "docs": [(r["id"], r["source"], r["text"]) for r in rows],
    "report": json.loads((root / "data/scrape/report.json").read_text()),
    "deps": code_deps(root, stage("scrape")),
}))
'''


def test_a_new_source_kind_is_one_new_file(tmp_path):
    assert "lines" not in KINDS  # the kind below exists only in the copy
    repo = tmp_path / "repo"
    shutil.copytree(Path(llmpipe.__file__).parent, repo / "llmpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "llmpipe/data/sources/lines.py").write_text(LINES_KIND, encoding="utf-8")
    (repo / "corpus").mkdir()
    (repo / "corpus/a.txt").write_text("first line\n\nsecond line\n", encoding="utf-8")
    (repo / "corpus/b.txt").write_text("third line\n", encoding="utf-8")
    (repo / "params.yaml").write_text(
        "scrape:\n  sources:\n    - {kind: lines, paths: ['corpus/*.txt']}\nscale:\n  workers: 1\n")
    (repo / "bad.yaml").write_text("scrape:\n  sources:\n    - {kind: lines, paths: x, extra: 1}\n")

    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=repo, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HOME": str(tmp_path)},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert out["kinds"] == ["demo", "http", "lines", "local", "warc"]
    assert out["module"] == str(repo / "llmpipe/data/sources/lines.py")  # the copy's, not the installed one
    # errors inside a source of the new kind name the key without pydantic's union tag
    assert "scrape.sources.0.paths: Input should be a valid list" in out["error"]
    assert "scrape.sources.0.extra: unknown key" in out["error"]
    assert out["units"] == [["corpus/a.txt"], ["corpus/b.txt"]]  # the kind's plan(): a file per task
    assert out["docs"] == [["lines/corpus/a.txt:1", "lines", "first line"],
                           ["lines/corpus/a.txt:3", "lines", "second line"],
                           ["lines/corpus/b.txt:1", "lines", "third line"]]
    assert out["metrics"]["docs_out"] == 3 and out["metrics"]["shards"] == 2
    assert out["report"]["skipped"] == {"blank_line": 1}
    assert out["report"]["examples"]["blank_line"] == [{"where": "corpus/a.txt:2", "detail": ""}]
    # dvc.yaml's computed code deps of scrape follow the discovery: editing the plug-in re-runs scrape
    assert "llmpipe/data/sources/lines.py" in out["deps"]
