import torch

from llmpipe.config import SampleParams, TokenizerParams
from llmpipe.model import GPT, GPTConfig
from llmpipe.stages.sample import cut_at_stop, sample_texts
from llmpipe.stages.tokenizer import train_tokenizer


def test_cut_at_stop():
    assert cut_at_stop("Hello.\nWorld\nMore", ["\n"]) == ("Hello.", True)
    assert cut_at_stop("abc", ["x", "y"]) == ("abc", False)
    assert cut_at_stop("a END b STOP", ["STOP", "END"]) == ("a ", True)


def test_sample_texts_batch_with_stop_strings():
    tok = train_tokenizer(iter(["the cat sat on the mat. the dog sat.\n"] * 30), TokenizerParams(vocab_size=280))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_head=2, d_model=32, block_size=64))
    cfg = SampleParams(prompts=["the", "a dog"], max_new_tokens=30, temperature=1.0, top_k=0, seed=3, stop=["t"])
    out = sample_texts(model, tok, cfg)
    assert [o["prompt"] for o in out] == cfg.prompts
    for o in out:
        assert "t" not in o["completion"]
        assert o["stopped_at_string"] or o["stopped_at_eot"] or o["new_tokens"] == 30
    again = sample_texts(model, tok, cfg)
    assert again[0]["completion"] == out[0]["completion"]  # seeded: reproducible
