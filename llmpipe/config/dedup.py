"""The dedup section: exact and MinHash near-duplicate removal."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llmpipe.config.base import Seed, Section


class BoilerplateParams(Section):
    """Lines repeated across many documents (menus, headers, licences), removed before dedup (CCNet, Dolma)."""

    enabled: bool = False
    min_docs: Annotated[int, Field(ge=2)] = 10  # a line in at least this many documents is boilerplate
    min_chars: Annotated[int, Field(ge=1)] = 20  # shorter lines ("Exit.", blank) are never counted


class DedupParams(Section):
    exact: bool = True
    near: bool = True
    # FineWeb's setting: word 5-grams, 112 permutations as 14 bands of 8 rows.
    shingle_size: Annotated[int, Field(ge=1, le=32)] = 5
    bands: Annotated[int, Field(ge=1, le=1024)] = 14
    rows: Annotated[int, Field(ge=1, le=64)] = 8
    seed: Seed = 1
    # Confirm each LSH candidate pair by the exact Jaccard of its shingle sets (raises precision).
    verify: bool = True
    jaccard_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75
    # Candidate pairs in an LSH bucket: all pairs up to this many members; in a larger bucket each member
    # with the first member and its next bucket_neighbours members (bounded cost; llmpipe/data/minhash.py).
    bucket_all_pairs_max: Annotated[int, Field(ge=1)] = 64
    bucket_neighbours: Annotated[int, Field(ge=0)] = 16
    # transitive: remove every member of a connected cluster of matches; direct: only a document that
    # matches (>= jaccard_threshold) the kept document it is removed for.
    clusters: Literal["transitive", "direct"] = "transitive"
    shard_docs: Annotated[int, Field(ge=1)] = 10_000  # documents read and hashed at once (bounds memory)
    shard_bytes: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 64_000_000  # ... and their bytes at once
    # processes hashing shards in parallel (0: one per core); with scale.dask_address the cluster's workers do
    workers: Annotated[int, Field(ge=0, le=1024)] = 0
    report_examples: Annotated[int, Field(ge=0)] = 10  # removed pairs listed in report.json
    # The index (data/dedup/index of an earlier run, copied aside) of a corpus accepted before: new
    # documents that duplicate it are removed, without reading or hashing that corpus again.
    reference_index: str | None = None
    boilerplate: BoilerplateParams = BoilerplateParams()

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows
