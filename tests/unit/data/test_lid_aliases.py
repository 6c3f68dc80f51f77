"""Language codes as users write them (nb, zh-TW, iw, eng, a quoted "no") match what the models answer,
for both language-ID models filter.lid_model offers."""

import pandas as pd
import pytest

from llmpipe.config.base import ParamsError
from llmpipe.config.filter import FilterParams
from llmpipe.stages.filter import filter_documents as filter_tally, removal_report, removal_stats
from llmpipe.stages.params import load_params


def filter_documents(df, cfg):
    """The core, with its tally as the stage reports it: (kept, metrics, report)."""
    kept, tally = filter_tally(df, cfg)
    return kept, removal_stats(tally), removal_report(tally)

from llmpipe.data.text import LID_MODELS, canonical_language, identify_language, lid_labels, wanted_languages

from tests.unit.data.test_filter import NO_QUALITY

NB = ("I morges var bussen forsinket igjen, så jeg gikk gjennom parken til stasjonen. Gresset var fortsatt "
      "vått, og noen joggere var allerede ute. Da jeg kom fram til perrongen, hadde toget for lengst gått, og "
      "jeg ble stående og lese rutetabellen.")
NN = ("I dag tidleg var bussen forseinka att, så eg gjekk gjennom parken til stasjonen. Graset var framleis "
      "vått, og nokre joggarar var alt ute. Då eg kom fram til perrongen, hadde toget gått for lenge sidan, og "
      "eg vart ståande og lese ruteplanen.")
HE = ("הבוקר האוטובוס שוב איחר, אז הלכתי ברגל דרך הפארק אל התחנה. הדשא עדיין היה רטוב וכמה רצים כבר יצאו "
      "לריצת הבוקר. כשהגעתי לרציף הרכבת כבר יצאה מזמן, ועמדתי וקראתי את לוח הזמנים.")
ZH = "今天早上公共汽车又晚点了，所以我穿过公园走到车站。草地还是湿的，已经有几个人在跑步。等我到了站台，火车早就开走了，我只好站在那里看时刻表。"
ID = ("Pagi ini bus terlambat lagi, jadi saya berjalan kaki melewati taman menuju stasiun. Rumputnya masih "
      "basah dan beberapa orang sudah berlari pagi. Ketika saya sampai di peron, keretanya sudah lama berangkat.")
EN = ("The bus was late again this morning, so I walked to the station through the park. The grass was still "
      "wet and a few joggers were already out.")


@pytest.mark.parametrize("code, canonical", [
    ("nb", "no"), ("NB", "no"), ("nob", "no"), ("no", "no"), ("nn", "nn"), ("nno", "nn"),
    ("zh-CN", "zh"), ("zh_TW", "zh"), ("zh-Hans", "zh"), ("zh-Hant-TW", "zh"), ("cmn", "zh"), ("zho", "zh"),
    ("iw", "he"), ("heb", "he"), ("in", "id"), ("ji", "yi"), ("jw", "jv"), ("mo", "ro"), ("fil", "tl"), ("gug", "gn"),
    ("pt-BR", "pt"), ("en-US", "en"), ("eng", "en"), ("sr-Latn", "sr"), (" de ", "de"),
])
def test_canonical_language(code, canonical):
    assert canonical_language(code) == canonical


def test_norwegian_asked_as_the_macrolanguage_covers_nynorsk_and_bokmal_alone_does_not():
    assert wanted_languages(["no"]) == {"no", "nn"}
    assert wanted_languages(["nb", "zh-TW", "iw"]) == {"no", "zh", "he"}


@pytest.mark.parametrize("model", LID_MODELS)
def test_models_answer_canonical_codes(model):
    labels = lid_labels(model)
    assert {"en", "no", "he", "id", "zh"} <= labels
    assert not labels & {"nb", "iw", "in", "ji"}  # the legacy codes never come out
    assert identify_language(HE, model)[0] == "he" and identify_language(ZH, model)[0] == "zh"


@pytest.mark.parametrize("model", LID_MODELS)
def test_filter_keeps_documents_asked_for_by_alias(model):
    df = pd.DataFrame({"id": ["nb", "he", "zh", "id", "en"], "text": [NB, HE, ZH, ID, EN]})
    cfg = FilterParams(languages=["nb", "iw", "zh-TW", "in"], lid_model=model, min_chars=50, min_lang_score=0.0,
                       quality=NO_QUALITY)
    kept, stats, _ = filter_documents(df, cfg)
    assert set(kept["id"]) == {"nb", "he", "zh", "id"}, kept[["id", "lang"]]
    assert stats["removed_language_docs"] == 1
    cfg = FilterParams(languages=["no"], lid_model=model, min_chars=50, min_lang_score=0.0, quality=NO_QUALITY)
    assert set(filter_documents(df, cfg)[0]["id"]) == {"nb"}


def test_nynorsk_is_kept_when_asked_for_as_nn_or_as_norwegian():
    # py3langid tells Nynorsk apart (90% of the UDHR's nn paragraphs, lid.176 30%: bench/lid.py)
    df = pd.DataFrame({"id": ["nn", "en"], "text": [NN, EN]})
    for languages in (["nn"], ["no"], ["nno"]):
        cfg = FilterParams(languages=languages, lid_model="py3langid", min_chars=50, min_lang_score=0.0,
                           quality=NO_QUALITY)
        assert list(filter_documents(df, cfg)[0]["id"]) == ["nn"], languages


def test_yaml_bare_no_is_refused_and_quoted_no_accepted(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("filter:\n  languages: [en, no]\n")
    with pytest.raises(ParamsError, match=r'filter\.languages: .*quote language codes, e\.g\. \["no"\]'):
        load_params(path)
    path.write_text('filter:\n  languages: [en, "no"]\n  lid_model: lid176\n')
    params = load_params(path)
    assert params.filter.languages == ["en", "no"] and wanted_languages(params.filter.languages) == {"en", "no", "nn"}
    path.write_text("filter:\n  lid_model: cld3\n")
    with pytest.raises(ParamsError, match=r"filter\.lid_model"):
        load_params(path)
