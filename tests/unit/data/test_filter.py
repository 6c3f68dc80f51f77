import pandas as pd

from llmpipe.config.filter import FilterParams, QualityParams
from llmpipe.data.quality import RULES
from llmpipe.stages.filter import filter_documents as filter_tally, removal_report, removal_stats


def filter_documents(df, cfg):
    """The core, with its tally as the stage reports it: (kept, metrics, report)."""
    kept, tally = filter_tally(df, cfg)
    return kept, removal_stats(tally), removal_report(tally)


# language tests switch the quality rules off: repeated sentences would fail the repetition rules
NO_QUALITY = QualityParams.model_validate({name: {"enabled": False} for name in RULES})

EN = "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence."
FR = "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde la scène."
DE = "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer vom alten Zaun zusieht."


def test_keeps_target_language_and_accounts_for_the_rest():
    df = pd.DataFrame({"id": ["en", "fr", "de", "short"], "text": [EN * 3, FR * 3, DE * 3, "Hi."]})
    kept, stats, report = filter_documents(df, FilterParams(languages=["en"], min_chars=50, quality=NO_QUALITY))
    assert list(kept["id"]) == ["en"]
    assert kept.loc[0, "lang"] == "en" and 0.5 <= kept.loc[0, "score"] <= 1.0
    assert stats["removed_language_docs"] == 2
    assert stats["removed_too_short_docs"] == 1
    assert stats["removed_too_short_bytes"] == 3 and stats["bytes_out"] == len(EN.encode()) * 3
    assert report["language"]["docs"] == 2 and {e["id"] for e in report["language"]["examples"]} == {"fr", "de"}


def test_several_languages_and_threshold():
    df = pd.DataFrame({"id": ["en", "fr"], "text": [EN * 3, FR * 3]})
    kept, _, _ = filter_documents(df, FilterParams(languages=["en", "fr"], min_chars=10, quality=NO_QUALITY))
    assert set(kept["lang"]) == {"en", "fr"}
    kept, stats, _ = filter_documents(df, FilterParams(languages=["en", "fr"], min_chars=10, min_lang_score=1.0,
                                                        quality=NO_QUALITY))
    assert stats["removed_low_language_score_docs"] + len(kept) == 2


def test_quality_rules_are_charged_in_the_report():
    from tests.unit.data.test_quality import GOOD

    df = pd.DataFrame({"id": ["good", "lorem"], "text": [GOOD, GOOD + "\nLorem ipsum dolor sit amet."]})
    kept, stats, report = filter_documents(df, FilterParams(min_chars=10, min_lang_score=0.0))
    assert list(kept["id"]) == ["good"]
    assert stats["removed_c4_lorem_ipsum_docs"] == 1 and report["c4_lorem_ipsum"]["examples"][0]["id"] == "lorem"


def test_language_id_on_paragraphs_in_fifteen_languages():
    from llmpipe.data.text import identify_language

    from bench.texts.multilingual import PARAGRAPHS

    wrong = [(lang, text[:40], identify_language(text)) for lang, text in PARAGRAPHS
             if identify_language(text)[0] != lang]
    assert len({lang for lang, _ in PARAGRAPHS}) == 15
    assert len(wrong) <= 1, wrong  # >= 97% on 60 paragraphs (measured: all 60 right)


def test_filter_keeps_the_target_languages_of_a_mixed_batch():
    from bench.texts.multilingual import PARAGRAPHS

    df = pd.DataFrame({"id": [f"{lang}{i}" for i, (lang, _) in enumerate(PARAGRAPHS)],
                       "text": [text for _, text in PARAGRAPHS]})
    kept, stats, _ = filter_documents(df, FilterParams(languages=["de", "ja", "ar"], min_chars=50,
                                                       quality=NO_QUALITY))
    assert sorted(set(kept["lang"])) == ["ar", "de", "ja"] and len(kept) == 12
    assert stats["removed_language_docs"] == 48


def test_a_rule_removing_a_large_share_of_bytes_is_warned(caplog):
    from llmpipe.stages.filter import warn_heavy_rules

    # language removes 2 of 5 equal-size documents (40% of the bytes), too_short a few bytes
    df = pd.DataFrame({"id": ["en1", "en2", "en3", "fr", "de", "short"],
                       "text": [EN * 3, EN * 3, EN * 3, FR * 3, DE * 3, "Hi."]})
    _, tally = filter_tally(df, FilterParams(min_chars=50, quality=NO_QUALITY))
    with caplog.at_level("WARNING", logger="llmpipe.stages.filter"):
        heavy = warn_heavy_rules(tally, 0.3)
    assert list(heavy) == ["language"] and 0.38 < heavy["language"] < 0.42
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "rule language removed" in record.getMessage()
    assert "fr (fr" in record.getMessage() and "Le renard" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmpipe.stages.filter"):
        assert warn_heavy_rules(tally, 0.5) == {} and warn_heavy_rules(tally, None) == {}
    assert not caplog.records
