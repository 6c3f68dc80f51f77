"""Hostile archives and a broken extraction environment (issue 19, points 2 and 3): nesting is bounded
without recursion, an unexpected exception on one input is a counted skip, links inside archives are
counted, and an extractor that cannot run stops the stage instead of reporting success."""

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import llmpipe.data.extract as ex
from llmpipe.stages import scrape
from llmpipe.stages.params import parse_params
from llmpipe.stages.registry import output
from llmpipe.stages.scrape import ExtractionBroken
from llmpipe.util.io import InputError

from tests.unit.data.test_sources import HTML, TEXT, local

REPO = Path(__file__).resolve().parents[3]


def zip_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def tar_of(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def nested(levels: int, kind: str) -> bytes:
    """A text document inside `levels` archives, each holding the next one."""
    name, data = "deep.txt", ("The innermost document. " + TEXT).encode()
    for i in range(levels):
        if kind == "zip":
            data, name = zip_of(name, data), f"level{i}.zip"
        else:
            data, name = tar_of([(name, data)]), f"level{i}.tar.gz"
    return data


def stage(tmp_path, workers=1, files_per_shard=64, **scrape_cfg):
    params = parse_params({"scrape": {"sources": [{"kind": "local", "paths": ["in/**/*"],
                                                   "files_per_shard": files_per_shard}], **scrape_cfg},
                           "scale": {"workers": workers}})
    return scrape.run(params, tmp_path).metrics


def write_inputs(tmp_path, files: dict[str, bytes]) -> None:
    (tmp_path / "in").mkdir(exist_ok=True)
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)


# --- point 2: nesting, unexpected exceptions, links --------------------------------------------------

def test_deeply_nested_zip_and_tar_are_counted_not_fatal(tmp_path):
    deep_zip, deep_tar = nested(500, "zip"), nested(500, "tar")
    assert len(deep_zip) < 200_000  # tiny files: the depth, not the size, used to end the stage
    write_inputs(tmp_path, {"deep.zip": deep_zip, "deep.tar.gz": deep_tar, "good.txt": TEXT.encode(),
                            "two.zip": nested(2, "zip")})  # shallow nesting is still read
    metrics = stage(tmp_path)
    assert metrics["docs_out"] == 2 and metrics["skipped_nested_too_deep"] == 2
    assert metrics["skipped"] == 2
    report = json.loads((tmp_path / output("scrape.report")).read_text())
    wheres = sorted(e["where"] for e in report["examples"]["nested_too_deep"])
    assert wheres[0].startswith("in/deep.tar.gz!level498.tar.gz!level497.tar.gz!level496.tar.gz")
    assert wheres[1].startswith("in/deep.zip!level498.zip!level497.zip!level496.zip")


@pytest.mark.reliability  # starts Prefect and a process pool: ~50 s on 2 cores
def test_nested_zip_under_the_process_pool(tmp_path):
    """Each file its own shard on 2 local processes: the deep zip used to come back as a PicklingError."""
    write_inputs(tmp_path, {"deep.zip": nested(500, "zip"), "good.txt": TEXT.encode()})
    metrics = stage(tmp_path, workers=2, files_per_shard=1)
    assert metrics["docs_out"] == 1 and metrics["skipped_nested_too_deep"] == 1


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_archive_depth_limit(tmp_path, depth):
    (tmp_path / "z.zip").write_bytes(nested(4, "zip"))  # the text sits inside 4 zips
    (tmp_path / "t.tgz").write_bytes(nested(3, "tar"))  # inside 3 tar.gz
    (tmp_path / ("g.txt" + ".gz" * 40)).write_bytes(nested_gzip(40))  # 40 gzip layers count as levels too
    docs, skips = local(tmp_path, max_archive_depth=depth)
    kept = sorted(d["path"].split("!")[0] for d in docs)
    assert kept == [name for name, levels in [("t.tgz", 3), ("z.zip", 4)] if levels <= depth]
    assert skips == {"nested_too_deep": 3 - len(kept)}


def nested_gzip(layers: int) -> bytes:
    import gzip

    data = TEXT.encode()
    for _ in range(layers):
        data = gzip.compress(data)
    return data


def test_links_and_special_members_in_archives_are_counted(tmp_path):
    link = tarfile.TarInfo("docs/link.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("docs/hard.txt")
    hard.type, hard.linkname = tarfile.LNKTYPE, "docs/one.txt"
    fifo = tarfile.TarInfo("docs/pipe.txt")
    fifo.type = tarfile.FIFOTYPE
    (tmp_path / "links.tar").write_bytes(tar_of([("docs/one.txt", TEXT.encode()), link, hard, fifo], "w"))
    with zipfile.ZipFile(tmp_path / "links.zip", "w") as zf:
        info = zipfile.ZipInfo("up.txt")
        info.external_attr = (0o120777 << 16)  # a Unix symlink; its content is the target path
        zf.writestr(info, "../../etc/passwd")
        zf.writestr("ok.txt", TEXT)
    docs, skips = local(tmp_path)
    assert sorted(d["path"] for d in docs) == ["links.tar!docs/one.txt", "links.zip!ok.txt"]
    assert skips == {"archive_link": 3, "archive_special_member": 1}


def encrypted_zip() -> bytes:
    """A zip whose first member is marked encrypted: zipfile raises RuntimeError (not BadZipFile) on it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("secret.txt", "ciphertext, supposedly")
        zf.writestr("open.txt", TEXT)
    data = bytearray(buf.getvalue())
    central = data.index(b"PK\x01\x02")  # the first central-directory entry: secret.txt
    data[central + 8] |= 0x01  # general purpose flag bit 0: encrypted
    return bytes(data)


def test_an_unexpected_exception_on_one_input_is_counted(tmp_path):
    huge_int = b'{"text": 1' + b"1" * 5000 + b"}"  # json raises a plain ValueError past 4300 digits
    write_inputs(tmp_path, {"locked.zip": encrypted_zip(), "good.txt": TEXT.encode(),
                            "big.jsonl": b'{"text": "ok"}\n' + huge_int + b'\n{"text": "fine"}\n'})
    metrics = stage(tmp_path)
    assert metrics["docs_out"] == 4  # good.txt, locked.zip!open.txt and 2 jsonl lines
    assert metrics["skipped_read_error"] == 1 and metrics["skipped_invalid_json"] == 1
    example = json.loads((tmp_path / output("scrape.report")).read_text())["examples"]["read_error"][0]
    assert example["where"] == "in/locked.zip!secret.txt" and example["detail"].startswith("RuntimeError:")


# --- point 3: the extraction environment -----------------------------------------------------------

SCRIPT = """
import sys
sys.modules["lxml_html_clean"] = None  # as if pip had not installed it: every import of it fails
from llmpipe.cli import main
sys.exit(main(["--root", sys.argv[1], "--params", sys.argv[2], "scrape"]))
"""


def test_a_missing_extractor_module_fails_the_stage(tmp_path):
    write_inputs(tmp_path, {"page.html": HTML.encode(), "good.txt": TEXT.encode()})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"scrape": {"sources": [{"kind": "local", "paths": ["in/*"]}]},
                                      "scale": {"workers": 1}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # MLflow tracks into tmp_path/mlflow.db
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(params)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # an environment fault: not exit 2 (bad input)
    last = proc.stderr.strip().splitlines()[-1]
    assert "ExtractorUnavailable" in last and "missing module lxml_html_clean" in last
    assert "pip install lxml-html-clean" in last
    assert not (tmp_path / output("scrape.docs")).exists()  # no output claiming a successful scrape


def test_the_missing_module_is_named_for_the_other_engine(monkeypatch):
    for name in ["resiliparse"] + [k for k in sys.modules if k.startswith("resiliparse.")]:
        monkeypatch.setitem(sys.modules, name, None)  # restored after the test
    with pytest.raises(ex.ExtractorUnavailable, match="missing module resiliparse.*pip install resiliparse"):
        ex.extract_text(HTML, "resiliparse")


def broken_engine(html: str) -> str:
    # What a trafilatura built against another lxml does on every page.
    raise AttributeError("module 'lxml.etree' has no attribute 'XPath'")


@pytest.mark.parametrize("pages", [4, 6])
def test_every_page_failing_the_same_way_fails_the_stage(tmp_path, monkeypatch, pages):
    monkeypatch.setitem(ex.EXTRACTORS, "trafilatura", broken_engine)
    write_inputs(tmp_path, {f"p{i}.html": HTML.encode() for i in range(pages)} | {"good.txt": TEXT.encode()})
    if pages < scrape.SYSTEMATIC_FAILURE_PAGES:  # too few pages to tell: counted as before
        assert stage(tmp_path)["skipped_extract_error"] == pages
        return
    with pytest.raises(ExtractionBroken, match=f"all {pages} HTML pages failed extraction with AttributeError"):
        stage(tmp_path)
    assert not isinstance(ExtractionBroken("x"), InputError)  # exit status 1 from the CLI, not 2
    assert not (tmp_path / output("scrape.docs")).exists()


def test_one_page_extracted_keeps_the_failures_counted(tmp_path, monkeypatch):
    real = ex.EXTRACTORS["trafilatura"]
    monkeypatch.setitem(ex.EXTRACTORS, "trafilatura",
                        lambda html: real(html) if "keep me" in html else broken_engine(html))
    pages = {f"p{i}.html": HTML.encode() for i in range(6)}
    pages["ok.html"] = HTML.replace("Title", "keep me").encode()
    write_inputs(tmp_path, pages)
    metrics = stage(tmp_path)
    assert metrics["docs_out"] == 1 and metrics["skipped_extract_error"] == 6
