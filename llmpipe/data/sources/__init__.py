"""Document sources as plug-ins: one module per kind, so that a new kind of source is one new file here.

Every source yields plain dicts (id, source, path, url, title, text, sha256, fetched_at; make_doc) or a
`Skip` naming why an input could not become a document; the scrape stage counts skips by reason and goes
on with the rest.

A kind is a module of this package that defines (the `SourceKind` protocol below):

    PARAMS                          its params model: a config Section with `kind: Literal["<kind>"]`
                                    and a default for it; `kind: <kind>` in scrape.sources selects it
    plan(source, cfg, root)         -> list[tuple[str, ...]]: how the source splits into work units, one
                                    output shard each: the inputs one task reads (paths relative to
                                    `root` for file kinds; `[()]` for a kind read whole by one task)
    read(source, files, cfg, root)  -> Iterator[dict | Skip]: the documents of one unit

Modules without these (documents: what every kind shares; archives: containers of files; http_params: the
http kind's params, which its crawler reads too) are helpers. A kind or helper types the scrape section it
is handed by documents.ReadSettings: the section is defined here, from the kinds, so importing it back
would tie every kind to this package in a cycle.
At import, every module here is loaded (pkgutil) and the kinds found make the discriminated union
`Source` that ScrapeParams.sources validates against; the scrape stage dispatches by `kind` through
plan_units/iter_unit. Their code deps follow too: llmpipe.ops.codedeps counts every module of a package
that discovers its modules as imported by it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Iterator, Literal, Protocol, Union

from pydantic import Field

from llmpipe.config.base import Section
from llmpipe.data.sources.archives import iter_warc_stream
from llmpipe.data.sources.documents import (ENVIRONMENT_ERRORS, Skip, cache_dir, decode, glob_files, guarded,
                                            html_document, iso_time, looks_binary, make_doc, now_iso,
                                            read_capped, read_error)
from llmpipe.data.sources.local import iter_named_bytes

__all__ = ["ENVIRONMENT_ERRORS", "KINDS", "ScrapeParams", "Skip", "Source", "SourceKind", "Unit", "cache_dir",
           "decode", "discover", "glob_files", "guarded", "html_document", "iso_time", "iter_named_bytes",
           "iter_unit", "iter_warc_stream", "looks_binary", "make_doc", "now_iso", "plan_units", "read_capped",
           "read_error"]


class SourceKind(Protocol):
    """What a kind module defines (module attributes, not a class to subclass)."""

    PARAMS: type[Section]

    def plan(self, source: Section, cfg: ScrapeParams, root: Path) -> list[tuple[str, ...]]: ...

    def read(self, source: Section, files: tuple[str, ...], cfg: ScrapeParams,
             root: Path) -> Iterator[dict | Skip]: ...


def discover(package: str, path: list[str]) -> dict[str, ModuleType]:
    """kind -> module, for every module under `path` (the package `package`) that defines PARAMS, plan
    and read, in module-name order. Two modules claiming one kind, or a PARAMS without a `kind` default,
    are errors of the code: they fail at import, naming the module."""
    kinds: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(path):
        module = importlib.import_module(f"{package}.{info.name}")
        if not all(hasattr(module, name) for name in ("PARAMS", "plan", "read")):
            continue  # a helper module
        field = module.PARAMS.model_fields.get("kind")
        kind = field.default if field is not None else None
        if not isinstance(kind, str):
            raise TypeError(f"{module.__name__}.PARAMS needs a field kind: Literal[...] with a default")
        if kind in kinds:
            raise TypeError(f"source kind {kind!r} is defined by {kinds[kind].__name__} and {module.__name__}")
        kinds[kind] = module
    return kinds


KINDS: dict[str, ModuleType] = discover(__name__, __path__)
_PARAMS = tuple(m.PARAMS for m in KINDS.values())
# The union of the kinds' params, told apart by `kind` (pydantic needs two or more members to discriminate).
Source = Annotated[Union[_PARAMS], Field(discriminator="kind")] if len(_PARAMS) > 1 else _PARAMS[0]


class ScrapeParams(Section):
    """The scrape section: the sources to read and the limits on what is read."""

    sources: list[Source] = Field(default_factory=lambda: [KINDS["demo"].PARAMS()], min_length=1)
    max_doc_bytes: Annotated[int, Field(ge=1)] = 50_000_000  # larger documents (and files) are skipped
    # HTML main-text extraction: trafilatura (the quality reference) or resiliparse (much faster: docs/benchmarks.md).
    extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    extract_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0  # an extraction taking longer is abandoned
    buffer_bytes: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 128_000_000  # text per row group written
    # Archives (and .gz layers) nested inside archives are opened to this many levels; deeper ones are
    # counted as nested_too_deep. Small: real corpora nest 1-2 levels, hostile files nest hundreds.
    max_archive_depth: Annotated[int, Field(ge=1, le=16)] = 3


# --- work units: what one task reads ---------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """A slice of one source that one task reads and writes as one output shard."""

    source_index: int
    files: tuple[str, ...] = ()  # what the kind's plan() gave: for file kinds, paths relative to the root


def plan_units(cfg: ScrapeParams, root: Path) -> list[Unit]:
    """Split the sources into units, each by its kind's plan(): e.g. a WARC file each, local files in
    groups, the demo corpus and each HTTP source whole (the crawler parallelises its own requests)."""
    return [Unit(i, tuple(files)) for i, source in enumerate(cfg.sources)
            for files in KINDS[source.kind].plan(source, cfg, root)]


def iter_unit(unit: Unit, cfg: ScrapeParams, root: Path) -> Iterator[dict | Skip]:
    source = cfg.sources[unit.source_index]
    yield from KINDS[source.kind].read(source, unit.files, cfg, root)
