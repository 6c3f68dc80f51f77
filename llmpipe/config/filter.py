"""The filter section: language ID and the quality rules of llmpipe/data/quality.py."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from llmpipe.config.base import NgramSize, Section


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
    top_ngram_max_fraction: dict[NgramSize, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_ngram_max_fraction: dict[NgramSize, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})


class ShortLinesRule(Rule):
    max_chars: Annotated[int, Field(ge=1)] = 30
    max_fraction: Annotated[float, Field(ge=0, le=1)] = 0.67


class QualityParams(Section):
    """One entry per rule of llmpipe/data/quality.py, defaults as published (each rule cites its source)."""

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
    # Codes as users write them (nb, zh-TW, iw, eng, ...): llmpipe.data.text.canonical_language maps them.
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    # py3langid: the more accurate of the two on the UDHR paragraphs of the languages each knows (bench/lid.py).
    lid_model: Literal["lid176", "py3langid"] = "py3langid"
    min_lang_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    min_chars: Annotated[int, Field(ge=0)] = 200
    shard_docs: Annotated[int, Field(ge=1)] = 20_000  # documents filtered by one task (bounds memory)
    buffer_bytes: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 128_000_000  # ... and their bytes at once
    # Language ID reads this many characters from each document: enough for a confident
    # decision, bounded so a 50 MB document costs no more than a 10 KB one.
    lid_sample_chars: Annotated[int, Field(ge=100)] = 10_000
    quality: QualityParams = QualityParams()
    examples_per_rule: Annotated[int, Field(ge=0, le=100)] = 3
    # A rule removing more than this share of the corpus's bytes is logged as a WARNING with examples
    # and listed in the report: on a new corpus that is usually a rule misfiring, not bad text. null: off.
    warn_removed_share: Annotated[float | None, Field(gt=0.0, le=1.0)] = 0.3

    @field_validator("languages", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value):
        # YAML 1.1 reads a bare no (Norwegian) as false: say so rather than "not a valid string".
        if isinstance(value, list) and any(isinstance(v, bool) for v in value):
            raise ValueError('YAML read a bare no/yes/on/off as a boolean: quote language codes, e.g. ["no"] or [nb]')
        return value
