"""The baselines beside the model: the Kneser-Ney n-gram, the add-one unigram and xz."""

import numpy as np
import pytest

from llmpipe.config.evaluate import BaselineParams
from llmpipe.evals.baselines import baseline_metrics, tail_bytes, tail_tokens
from llmpipe.evals.compress import stream_bytes, xz_baseline, xz_bits
from llmpipe.evals.ngram import fit_kneser_ney, unigram_bits


def markov_tokens(n: int, vocab: int = 40, seed: int = 0) -> np.ndarray:
    """A second-order chain: the next token is a fixed function of the two before it 80% of the time."""
    rng = np.random.default_rng(seed)
    table = np.random.default_rng(99).integers(1, vocab, (vocab, vocab))
    x = np.zeros(n, dtype=np.int64)
    x[:2] = 1, 2
    noise = rng.integers(1, vocab, n)
    keep = rng.random(n) < 0.8
    for i in range(2, n):
        x[i] = table[x[i - 2], x[i - 1]] if keep[i] else noise[i]
    return x


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_every_distribution_sums_to_one(order):
    model = fit_kneser_ney(markov_tokens(3000), order, vocab_size=50)
    # seen contexts, a context never seen, and one with ids the training tokens never use
    for context in ([], [1, 2], [2, 1, 2, 1], [45, 46, 47, 48], [0, 0]):
        p = model.probs(np.array(context, dtype=np.int64))
        assert p.shape == (50,) and (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-9)


def test_stream_bits_are_the_probabilities_of_each_token_in_its_context():
    model = fit_kneser_ney(markov_tokens(3000), 3, vocab_size=50)
    val = markov_tokens(200, seed=1)
    bits = model.stream_bits(val)
    padded = np.concatenate([[0, 0], val])
    for j in (0, 1, 2, 57, 199):
        assert bits[j] == pytest.approx(-np.log2(model.probs(padded[j : j + 2])[val[j]]), rel=1e-12)


def test_a_deterministic_next_token_costs_almost_nothing():
    train = np.tile(np.arange(1, 11), 300)
    model = fit_kneser_ney(train, 3, vocab_size=20)
    bits = model.stream_bits(np.tile(np.arange(1, 11), 5))[2:]  # contexts the training tokens show
    assert bits.max() < 0.01
    assert unigram_bits(train, np.arange(1, 11), 20).mean() > 3  # log2(10) for a unigram


def test_higher_orders_win_on_a_second_order_chain():
    train, val = markov_tokens(20000), markov_tokens(4000, seed=1)
    per_order = [fit_kneser_ney(train, k, 40).stream_bits(val).mean() for k in (1, 2, 3)]
    assert per_order[2] < per_order[1] - 0.5 and per_order[1] < per_order[0]


def test_order_one_is_the_unigram():
    rng = np.random.default_rng(0)
    freqs = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
    train = rng.choice(5, 50000, p=freqs)
    model = fit_kneser_ney(train, 1, vocab_size=5)
    # no context matters, and with large counts the distribution is the training frequencies
    assert np.allclose(model.probs(np.array([3])), model.probs(np.array([0])))
    assert np.allclose(model.probs(np.zeros(0, dtype=np.int64)), np.bincount(train) / len(train), atol=1e-4)
    val = rng.choice(5, 5000, p=freqs)
    assert model.stream_bits(val).sum() == pytest.approx(unigram_bits(train, val, 5).sum(), rel=1e-3)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="vocabulary"):
        fit_kneser_ney(np.array([1, 2, 70]), 2, vocab_size=64)
    with pytest.raises(ValueError, match="order"):
        fit_kneser_ney(np.array([1, 2]), 0, vocab_size=64)


def words(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return b" ".join(bytes(rng.integers(97, 123, rng.integers(2, 9)).astype(np.uint8)) for _ in range(n))


def test_xz_codes_a_copy_of_its_context_almost_free():
    train = words(4000, 0)
    bits = xz_baseline(train, train)
    assert bits["alone_bits"] > 3 * len(train)  # random letters: about log2(26) bits a byte
    assert bits["conditional_bits"] < bits["alone_bits"] / 50
    other = xz_baseline(train, words(4000, 1))  # new text gains nothing from the context
    assert other["conditional_bits"] > 0.9 * other["alone_bits"]
    assert xz_bits(b"") == 0


def test_stream_bytes_codes_special_tokens_as_one_nul():
    pieces = [b"", b"ab", b"c", b"\xe2\x82"]
    ids = np.array([1, 2, 0, 3, 1, 0])
    assert stream_bytes(ids, pieces) == b"abc\0\xe2\x82ab\0"
    arrays = [np.array([1, 2, 0]), np.array([3, 1])]
    assert tail_tokens(arrays, 3).tolist() == [0, 3, 1] and tail_tokens(arrays, 9).tolist() == [1, 2, 0, 3, 1]
    assert tail_bytes(arrays, pieces, 4) == b"\xe2\x82ab" and tail_bytes(arrays, pieces, 99) == b"abc\0\xe2\x82ab"


def test_baseline_metrics_score_the_masked_targets_over_their_bytes():
    pieces = [b""] + [bytes([96 + i]) * (1 + i % 3) for i in range(1, 40)]
    lengths = np.array([len(p) for p in pieces])
    train = [markov_tokens(6000)[:3000], markov_tokens(6000)[3000:]]
    val = markov_tokens(500, seed=1)
    scored = np.ones(500, dtype=bool)
    scored[:100] = False
    out = baseline_metrics(train, val, scored, lengths, pieces, 40, 0, BaselineParams(ngram_order=3))
    assert out["baseline_bytes"] == lengths[val[100:]].sum()
    model = fit_kneser_ney(np.concatenate(train), 3, 40)
    assert out["ngram_bits_per_byte"] == pytest.approx(model.stream_bits(val)[100:].sum() / out["baseline_bytes"])
    assert out["ngram_bits_per_byte"] < out["unigram_bits_per_byte"]
    assert 0 < out["compressor_bits_per_byte"] < out["compressor_alone_bits_per_byte"]
    assert "compressor_bits_per_byte" not in baseline_metrics(train, val, scored, lengths, pieces, 40, 0,
                                                              BaselineParams(compressor="none"))
