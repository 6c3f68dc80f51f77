import torch

from llmpipe.config.sample import SampleParams
from llmpipe.config.tokens import TokenizerParams
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.stages.sample import cut_at_stop, sample_texts
from llmpipe.tokens.bpe import train_tokenizer


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


def test_generate_cli_streams_the_greedy_completion(tiny_pipeline):
    """`llmpipe generate` on the tiny pipeline's model prints the prompt and then exactly the text of the
    greedy tokens (streamed piece by piece), and a --stop string cuts it before the string."""
    from tokenizers import Tokenizer

    from llmpipe.stages.registry import output
    from llmpipe.training.generate import generate
    from llmpipe.tokens.bpe import EOT
    from llmpipe.model.weights import load_model

    from tests.conftest import run

    tok = Tokenizer.from_file(str(tiny_pipeline / output("tokenizer.tokenizer")))
    ids = generate(load_model(tiny_pipeline / output("pretrain.model")), tok.encode("ROMEO.").ids, 24,
                   eot_id=tok.token_to_id(EOT), temperature=0.0)
    expected = tok.decode(ids)
    assert len(expected) > 10
    cli = ["llmpipe", "generate", "ROMEO.", "--max-new-tokens", "24", "--temperature", "0"]
    proc = run(cli, tiny_pipeline)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip("\n") == "ROMEO." + expected.rstrip("\n")
    stop = expected[len(expected) // 2 :][:3]
    proc = run(cli + ["--stop", stop], tiny_pipeline)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip("\n") == "ROMEO." + expected[: expected.index(stop)].rstrip("\n")
    proc = run(cli + ["--stop", ""], tiny_pipeline)
    assert proc.returncode == 2 and "stop.0: String should have at least 1 character" in proc.stderr
