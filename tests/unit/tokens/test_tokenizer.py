import pytest

from llmpipe.config.tokens import TokenizerParams
from llmpipe.tokens.bpe import token_byte_lengths, token_bytes, train_tokenizer
from llmpipe.tokens.bpe import EOT

CORPUS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles",
] * 20

HARD = [
    "Ünïcödé façade — “quotes” and naïve café",
    "日本語のテキストと中文文本 and 한국어",
    "emoji 🤖🚀 family 👨‍👩‍👧 flags 🇫🇷",
    "control \x00\x01\x07\t\r\n chars \x7f and \u200b zero width",
    "   leading and trailing spaces   ",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(iter(CORPUS), TokenizerParams(vocab_size=300, min_frequency=2))


def test_eot_is_special_token_zero(tok):
    assert tok.token_to_id(EOT) == 0
    assert tok.encode(f"a{EOT}b").ids.count(0) == 1


def test_vocab_size_and_merges_learned(tok):
    assert tok.get_vocab_size() == 300
    assert len(tok.encode(CORPUS[0]).ids) < 0.7 * len(CORPUS[0].encode("utf-8"))  # merges were learned


@pytest.mark.parametrize("text", CORPUS[:2] + HARD)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.parametrize("text", CORPUS[:2] + HARD)
def test_token_bytes_sum_to_utf8_length(tok, text):
    lengths = token_byte_lengths(tok)
    assert sum(int(lengths[i]) for i in tok.encode(text).ids) == len(text.encode("utf-8"))
    assert lengths[0] == 0  # <|endoftext|> stands for no bytes


@pytest.mark.parametrize("text", CORPUS[:2] + HARD)
def test_token_bytes_give_back_the_text(tok, text):
    pieces = token_bytes(tok)
    ids = tok.encode(text).ids
    assert b"".join(pieces[i] for i in ids) == text.encode("utf-8")
    assert [len(p) for p in pieces] == token_byte_lengths(tok).tolist()


def test_loads_in_transformers_with_special_tokens(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(str(tmp_path / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token=EOT)
    assert fast.eos_token_id == 0 and fast.convert_ids_to_tokens(0) == EOT
    for text in CORPUS[:2] + HARD:
        assert fast.encode(text) == tok.encode(text).ids
        assert fast.decode(fast.encode(text)) == text
