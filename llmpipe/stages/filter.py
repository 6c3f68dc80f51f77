"""Stage 2, filter: language identification, length, and the quality rules of llmpipe/quality.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .. import layout
from ..config import FilterParams, Params
from ..io import InputError, read_parquet, require_columns, write_json, write_parquet
from ..quality import RULES, first_failure
from ..text import identify_language
from .base import StageResult

log = logging.getLogger(__name__)


def filter_documents(df: pd.DataFrame, cfg: FilterParams) -> tuple[pd.DataFrame, dict, dict]:
    """Core: add `lang` and `score`; keep documents long enough, in a target language, passing every
    enabled quality rule. Returns (kept, stats, report): the report names, per rule, the documents and
    characters it removed and a few examples (a document is charged to the first rule it fails)."""
    langs, scores, reasons = [], [], []
    report: dict[str, dict] = {}
    wanted = set(cfg.languages)
    for doc_id, text in tqdm(zip(df["id"], df["text"]), total=len(df), desc="filter", unit="doc",
                             mininterval=2.0, disable=len(df) < 100):
        lang, score = identify_language(text[: cfg.lid_sample_chars])
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
        if rule:
            entry = report.setdefault(rule, {"docs": 0, "chars": 0, "examples": []})
            entry["docs"] += 1
            entry["chars"] += len(text)
            if len(entry["examples"]) < cfg.examples_per_rule:
                entry["examples"].append({"id": doc_id, "reason": why, "text": text[:300]})
    out = df.assign(lang=langs, score=scores)
    kept = out[pd.Series(reasons, index=df.index) == ""].reset_index(drop=True)
    stats = {"docs_in": len(df), "docs_out": len(kept), "chars_in": int(df["text"].str.len().sum()),
             "chars_out": int(kept["text"].str.len().sum())}
    for name in ["too_short", "language", "low_language_score", *RULES]:
        stats[f"removed_{name}_docs"] = report.get(name, {}).get("docs", 0)
        stats[f"removed_{name}_chars"] = report.get(name, {}).get("chars", 0)
    return kept, stats, report


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    src = root / layout.SCRAPE_DOCS
    df = read_parquet(src)
    require_columns(df, ["id", "text"], src)
    kept, stats, report = filter_documents(df, params.filter)
    if kept.empty:
        raise InputError(f"filter: every document of {src} was removed ({stats})")
    write_json(root / layout.FILTER_REPORT, report)
    write_parquet(root / layout.FILTER_DOCS, kept)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("filter: kept %d of %d documents; removed by rule: %s", stats["docs_out"], stats["docs_in"],
             {k: v["docs"] for k, v in report.items()} or "none")
    return StageResult(stats, artifacts=[root / layout.FILTER_REPORT])
