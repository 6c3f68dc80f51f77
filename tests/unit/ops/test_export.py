"""Export to a Hugging Face Llama folder: transformers loads it and agrees with our model."""

import pytest
import torch

from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.ops.export import export_hf
from llmpipe.tokens.bpe import EOT
from llmpipe.training.generate import generate
from llmpipe.util.io import InputError

transformers = pytest.importorskip("transformers")



@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 1}, {"tie_embeddings": False},
                                {"tie_embeddings": False, "zero_init_head": True}])
def test_logits_and_greedy_generation_match_transformers(tmp_path, tokenizer_file, kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, n_layer=2, n_head=4, d_model=64, block_size=64, **kw)).eval()
    with torch.no_grad():  # non-trivial norm weights, so a mapping mistake would show
        for block in model.blocks:
            block.norm1.weight.uniform_(0.5, 1.5)
            block.norm2.weight.uniform_(0.5, 1.5)
    out = export_hf(model, tokenizer_file, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    x = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    prompt = [5, 17, 3, 42]
    mine = generate(model, prompt, 20, temperature=0.0)
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                      pad_token_id=0)[0, len(prompt):].tolist()
    assert mine == ref


def test_tokenizer_loads_in_transformers_with_special_tokens(tmp_path, tokenizer_file):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, block_size=32))
    out = export_hf(model, tokenizer_file, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == EOT and tok.eos_token_id == 0
    text = "Whether 'tis nobler, café 🤖"
    assert tok.decode(tok(text)["input_ids"]) == text
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), eos_token=EOT)
    assert fast.convert_tokens_to_ids(EOT) == 0


@pytest.mark.parametrize("option, value", [("mlp", "gelu"), ("mlp", "relu2"), ("qk_norm", True),
                                           ("logit_softcap", 15.0), ("value_embeds", True)])
def test_architectures_llama_cannot_express_are_refused(tmp_path, tokenizer_file, option, value):
    model = GPT(GPTConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, block_size=32, **{option: value}))
    with pytest.raises(InputError, match=f"pretrain.model.{option}: {value} cannot be represented"):
        export_hf(model, tokenizer_file, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_and_atomically_written_files_get_the_umask_mode(tmp_path, tokenizer_file, umask):
    """mkstemp, mkdtemp and safetensors' writer create 0600/0700: an export for other users was unreadable."""
    import os
    import stat

    import pandas as pd

    from llmpipe.util.io import write_json, write_parquet
    from llmpipe.model.weights import save_model

    model = GPT(GPTConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, block_size=32))
    old = os.umask(umask)
    try:
        out = export_hf(model, tokenizer_file, tmp_path / "hf")
        save_model(model, tmp_path / "model")
        write_json(tmp_path / "m.json", {"a": 1})
        write_parquet(tmp_path / "d.parquet", pd.DataFrame({"x": [1]}))
    finally:
        os.umask(old)
    files = [*out.iterdir(), *(tmp_path / "model").iterdir(), tmp_path / "m.json", tmp_path / "d.parquet"]
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
