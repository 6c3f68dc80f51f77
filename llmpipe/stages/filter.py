"""Stage 2, filter: language identification, length, and the quality rules of llmpipe/data/quality.py."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from llmpipe.config.filter import FilterParams
from llmpipe.data.quality import RULES, first_failure
from llmpipe.data.text import identify_language, wanted_languages
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.util.executors import map_shards
from llmpipe.util.io import (InputError, atomic_dir, atomic_path, file_sha256, iter_parquet_batches, parquet_parts,
                             require_columns, stats_columns, write_json)
from llmpipe.util.resume import ShardCount, ShardLedger
from llmpipe.util.tally import Tally

log = logging.getLogger(__name__)
STAGE = stage("filter")


def filter_documents(df: pd.DataFrame, cfg: FilterParams) -> tuple[pd.DataFrame, Tally]:
    """Core: add `lang` and `score`; keep documents long enough, in a target language, passing every
    enabled quality rule. Returns (kept, tally): per rule, the documents and UTF-8 bytes it removed and a
    few examples (a document is charged to the first rule it fails); see removal_stats/removal_report."""
    langs, scores, reasons, sizes = [], [], [], []
    tally = Tally(cfg.examples_per_rule)
    wanted = wanted_languages(cfg.languages)  # aliases (nb, zh-TW, iw, ...) as the model answers
    for doc_id, text in tqdm(zip(df["id"], df["text"]), total=len(df), desc="filter", unit="doc",
                             mininterval=2.0, disable=len(df) < 100):
        lang, score = identify_language(text[: cfg.lid_sample_chars], cfg.lid_model)
        langs.append(lang)
        scores.append(score)
        if len(text) < cfg.min_chars:
            rule, why = "too_short", f"{len(text)} characters"
        elif lang not in wanted:
            rule, why = "language", f"{lang} ({score:.2f})"
        elif score < cfg.min_lang_score:
            rule, why = "low_language_score", f"{lang} ({score:.2f})"
        else:
            rule, why = first_failure(text, cfg.quality) or ("", "")
        reasons.append(rule)
        sizes.append(len(text.encode("utf-8")))
        if rule:
            tally.note("removed_docs", rule, example={"id": doc_id, "reason": why, "text": text[:300]})
            tally.note("removed_bytes", rule, sizes[-1])
    out = df.assign(lang=langs, score=scores)
    kept = out[pd.Series(reasons, index=df.index) == ""].reset_index(drop=True)
    tally.count("docs_in", len(df))
    tally.count("docs_out", len(kept))
    tally.count("bytes_in", sum(sizes))
    tally.count("bytes_out", sum(size for size, rule in zip(sizes, reasons) if not rule))
    return kept, tally


def removal_stats(tally: Tally) -> dict:
    """The stage's metrics: totals, and documents and bytes removed by every rule (zeros included)."""
    stats = {k: tally.totals[k] for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")}
    for name in ["too_short", "language", "low_language_score", *RULES]:
        stats[f"removed_{name}_docs"] = tally.group("removed_docs")[name]
        stats[f"removed_{name}_bytes"] = tally.group("removed_bytes")[name]
    return stats


def removal_report(tally: Tally) -> dict:
    """report.json: per rule that removed anything, its documents, bytes and first examples."""
    examples = tally.examples.get("removed_docs", {})
    return {rule: {"docs": n, "bytes": tally.group("removed_bytes")[rule], "examples": examples.get(rule, [])}
            for rule, n in tally.group("removed_docs").items()}


WARN_EXAMPLES = 2  # examples shown in the log line of a rule over filter.warn_removed_share
WARN_EXAMPLE_CHARS = 120


def heavy_rules(tally: Tally, share: float | None) -> dict[str, float]:
    """Rules that removed more than `share` of the input's bytes, with their share, largest first."""
    total = tally.totals["bytes_in"]
    if share is None or total <= 0:
        return {}
    shares = {rule: n / total for rule, n in tally.group("removed_bytes").items()}
    return {rule: round(s, 4) for rule, s in sorted(shares.items(), key=lambda kv: -kv[1]) if s > share}


def warn_heavy_rules(tally: Tally, share: float | None) -> dict[str, float]:
    """Log a WARNING for every rule over `share` of the bytes, naming it with its share and a couple of
    the documents it removed, so a misfiring rule on a new corpus is seen before training on what is left."""
    heavy = heavy_rules(tally, share)
    examples = tally.examples.get("removed_docs", {})
    for rule, removed in heavy.items():
        shown = "; ".join(f"{e['id']} ({e['reason']}): {' '.join(e['text'][:WARN_EXAMPLE_CHARS].split())!r}"
                          for e in examples.get(rule, [])[:WARN_EXAMPLES])
        log.warning("filter: rule %s removed %.1f%% of the corpus's bytes (over filter.warn_removed_share = "
                    "%.0f%%); e.g. %s", rule, 100 * removed, 100 * share, shown or "no examples kept")
    return heavy


def filter_part(job: tuple[Path, Path], cfg: FilterParams) -> Tally:
    """One shard: filter a scrape part batch by batch (at most filter.shard_docs rows and about
    filter.buffer_bytes of data in memory, so a batch of huge documents stays small) into a part of the
    same name, one row group per batch. Returns the part's tally for merging."""
    src, dest = job
    tally = Tally(cfg.examples_per_rule)
    with atomic_path(dest) as tmp:
        writer = None
        for batch in iter_parquet_batches(src, cfg.shard_docs, max_bytes=cfg.buffer_bytes):
            df = batch.to_pandas()
            require_columns(df, ["id", "text"], src)
            kept, batch_tally = filter_documents(df, cfg)
            tally.merge(batch_tally)
            if writer is None:
                schema = batch.schema.append(pa.field("lang", pa.string())).append(pa.field("score", pa.float64()))
                writer = pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=stats_columns(schema))
            writer.write_table(pa.Table.from_pandas(kept, schema=writer.schema, preserve_index=False))
        if writer is None:
            raise InputError(f"{src}: no rows")
        writer.close()
    return tally


def resumable_part(src: Path, cfg: FilterParams, ledger: ShardLedger) -> tuple[Tally, bool]:
    """filter_part into the stage's work folder, skipped when a completion record says this very part
    (its content hash) was filtered already with these params and code. Returns (tally, resumed)."""
    inputs = file_sha256(src)
    done = ledger.lookup(src.name, inputs)
    if done is not None:
        return Tally.from_dict(done), True
    tally = filter_part((src, ledger.path(src.name)), cfg)
    ledger.commit(src.name, inputs, [src.name], tally.to_dict())
    return tally, False


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.filter
    src = root / STAGE.inp("docs")
    parts = parquet_parts(src)
    if not parts:
        raise InputError(f"{src}: no Parquet parts (did the scrape stage run?)")
    ledger = ShardLedger.open(root, STAGE.name, __name__, cfg)
    results = map_shards(functools.partial(resumable_part, cfg=cfg, ledger=ledger), parts, params.scale, "filter")
    count = ShardCount("filter", [resumed for _, resumed in results])
    tally = Tally.merged([t for t, _ in results], cfg.examples_per_rule)
    stats, report = removal_stats(tally), removal_report(tally)
    if stats["docs_out"] == 0:
        raise InputError(f"filter: every document of {src} was removed ({stats})")
    heavy = warn_heavy_rules(tally, cfg.warn_removed_share)
    for rule, share in heavy.items():
        report[rule]["over_warn_share"] = share
    stats["rules_over_warn_share"] = len(heavy)
    with atomic_dir(root / STAGE.out("docs")) as out_dir:
        ledger.publish([part.name for part in parts], out_dir)
    write_json(root / STAGE.out("report"), report)
    ledger.clear()
    stats["shards"] = len(parts)
    stats.update(count.metrics())
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("filter: kept %d of %d documents; removed by rule: %s", stats["docs_out"], stats["docs_in"],
             {k: v["docs"] for k, v in report.items()} or "none")
    return StageResult(stats, artifacts=[root / STAGE.out("report")])
