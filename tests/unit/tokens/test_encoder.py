"""The fast encoder gives exactly the ids of tokenizer.json, or is not used."""

import unicodedata

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from llmpipe.config.tokens import TokenizerParams
from llmpipe.tokens.bpe import train_tokenizer
from llmpipe.tokens.bpe import EOT
from llmpipe.tokens.encoder import load_encoder

from tests.unit.tokens.test_tokenizer import CORPUS, HARD

MORE = [
    "Don't, won't, I'll, we've, they're, she'd  — and 'quoted' words.\n\n\n   trailing   \n",
    "Numbers 12345 67.89 1,000,000 and ½ ⅓ ², Roman Ⅻ, Arabic ٣٤٥",
    "Mixed\u00a0no-break\u2003em space\ttab\r\ncrlf  \n\n",
    "Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย",
    "e\u0301 versus é (NFD and NFC)",
    f"a literal {EOT} inside a document",
]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "nfc"])
def tokenizer_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    texts = CORPUS + HARD + MORE
    train_tokenizer(iter(texts * 3), TokenizerParams(vocab_size=600, nfc=request.param)).save(str(path))
    return path


def test_fast_engine_matches_tokenizers(tokenizer_file):
    enc = load_encoder(tokenizer_file, threads=2, check_texts=CORPUS[:2])
    assert enc.engine == "tiktoken"
    hf = Tokenizer.from_file(str(tokenizer_file))
    hf.encode_special_tokens = True
    texts = CORPUS[:2] + HARD + MORE + [" ".join(MORE) * 5]
    expected = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    assert enc.encode_batch(texts) == expected
    # the arrays the tokenize stage writes from: the same ids, in input order, on one thread or several
    for threads in (1, 2):
        enc.threads = threads
        arrays = enc.encode_arrays(texts)
        assert all(a.dtype == "uint32" for a in arrays) and [a.tolist() for a in arrays] == expected
    for t in texts:  # and everything round-trips (to its NFC form when the tokenizer normalizes)
        assert hf.decode(enc.encode_batch([t])[0]) == (unicodedata.normalize("NFC", t) if hf.normalizer else t)


def test_literal_end_of_text_stays_text(tokenizer_file):
    enc = load_encoder(tokenizer_file)
    ids = enc.encode_batch([f"before {EOT} after"])[0]
    eot = Tokenizer.from_file(str(tokenizer_file)).token_to_id(EOT)
    assert eot not in ids and len(ids) > 5
    assert enc.encode_arrays([f"before {EOT} after"])[0].tolist() == ids


def test_other_tokenizers_fall_back_to_tokenizers(tmp_path):
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]", EOT]))
    tok.save(str(tmp_path / "tokenizer.json"))
    enc = load_encoder(tmp_path / "tokenizer.json", check_texts=CORPUS[:1])
    assert enc.engine == "tokenizers"
    assert enc.encode_batch(["to be or not"])[0] == tok.encode("to be or not").ids
    assert enc.encode_arrays(["to be or not"])[0].tolist() == tok.encode("to be or not").ids
