"""Stage 2, filter: language identification and quality heuristics."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .. import layout
from ..config import FilterParams, Params
from ..io import InputError, read_parquet, require_columns, write_parquet
from ..text import identify_language
from .base import StageResult

log = logging.getLogger(__name__)


def filter_documents(df: pd.DataFrame, cfg: FilterParams) -> tuple[pd.DataFrame, dict]:
    """Core: add `lang` and `score`, keep documents in the target languages, long enough."""
    langs, scores, reasons = [], [], []
    wanted = set(cfg.languages)
    for text in tqdm(df["text"], desc="filter", unit="doc", mininterval=2.0, disable=len(df) < 100):
        lang, score = identify_language(text[: cfg.lid_sample_chars])
        langs.append(lang)
        scores.append(score)
        if len(text) < cfg.min_chars:
            reasons.append("too_short")
        elif lang not in wanted:
            reasons.append("language")
        elif score < cfg.min_lang_score:
            reasons.append("low_language_score")
        else:
            reasons.append("")
    out = df.assign(lang=langs, score=scores)
    reason = pd.Series(reasons, index=df.index)
    kept = out[reason == ""].reset_index(drop=True)
    nbytes = df["text"].str.len()
    stats = {"docs_in": len(df), "docs_out": len(kept)}
    for name in ("too_short", "language", "low_language_score"):
        stats[f"removed_{name}_docs"] = int((reason == name).sum())
        stats[f"removed_{name}_chars"] = int(nbytes[reason == name].sum())
    return kept, stats


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    src = root / layout.SCRAPE_DOCS
    df = read_parquet(src)
    require_columns(df, ["id", "text"], src)
    kept, stats = filter_documents(df, params.filter)
    if kept.empty:
        raise InputError(f"filter: every document of {src} was removed ({stats})")
    write_parquet(root / layout.FILTER_DOCS, kept)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("filter: kept %d of %d documents", stats["docs_out"], stats["docs_in"])
    return StageResult(stats)
