"""GGUF export without llama.cpp: the file's fields and tensors as gguf's reader sees them, the RoPE
row order llama.cpp's llama architecture expects, and the refusal of what that architecture cannot
express (tests/integration/test_gguf.py runs the file in llama.cpp)."""

import numpy as np
import pytest
import torch

from llmpipe.cli import main
from llmpipe.model.gpt import GPT, GPTConfig, apply_rope, rope_tables
from llmpipe.model.weights import save_model
from llmpipe.ops.gguf import export_gguf, rope_interleave
from llmpipe.tokens.chat import CHAT_TEMPLATE
from llmpipe.util.io import InputError

gguf = pytest.importorskip("gguf")



def field(reader, key):
    f = reader.fields[key]
    return f.contents()


@pytest.mark.parametrize("tie, dtype", [(True, "f32"), (False, "f16")])
def test_fields_and_tensors_are_llama_cpp_s(tmp_path, tokenizer_file, tie, dtype):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, n_layer=2, n_head=4, n_kv_head=2, d_model=64, block_size=48,
                          rope_base=5000.0, tie_embeddings=tie))
    path = export_gguf(model, tokenizer_file, tmp_path / "out", dtype=dtype)
    assert path == tmp_path / "out" / "model.gguf"
    r = gguf.GGUFReader(path)
    assert field(r, "general.architecture") == "llama"
    expect = {"llama.context_length": 48, "llama.embedding_length": 64, "llama.block_count": 2,
              "llama.feed_forward_length": model.cfg.ffn_dim, "llama.attention.head_count": 4,
              "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 5000.0,
              "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-6),
              "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
              "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0,
              "tokenizer.chat_template": CHAT_TEMPLATE, "tokenizer.ggml.eot_token_id": 4}  # <|end|> ends a turn
    assert {k: field(r, k) for k in expect} == expect
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 320 and tokens[0] == "<|endoftext|>"
    assert field(r, "tokenizer.ggml.token_type")[:6] == [3, 3, 3, 3, 3, 1]  # control (eot, chat markers), normal
    assert all(len(m.split(" ")) == 2 for m in field(r, "tokenizer.ggml.merges"))

    tensors = {t.name: t for t in r.tensors}
    assert ("output.weight" in tensors) == (not tie)  # tied: llama.cpp reuses token_embd
    assert {f"blk.1.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                          "ffn_down", "attn_norm", "ffn_norm")} <= set(tensors)
    big = gguf.GGMLQuantizationType.F32 if dtype == "f32" else gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.ffn_up.weight"].tensor_type == big
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    k = model.blocks[0].attn.qkv_proj.weight[64:96].detach()
    assert np.allclose(np.asarray(tensors["blk.0.attn_k.weight"].data, dtype=np.float32).reshape(32, 64),
                       rope_interleave(k, 2).numpy(), atol=1e-3)


def test_interleaved_rows_under_adjacent_pair_rope_equal_our_half_split_rope():
    """llama.cpp's llama rope rotates channels (2i, 2i+1); ours rotates (i, i + hd/2). After the row
    permutation, rotating the permuted vector the adjacent way is the permuted rotated vector."""
    torch.manual_seed(0)
    heads, hd, T = 3, 8, 5
    x = torch.randn(1, heads, T, hd)
    cos, sin = rope_tables(hd, T, 10000.0)
    ours = apply_rope(x, cos, sin)

    def permute(v):  # the rows of one projection are (heads * hd); as vectors: per position
        rows = v[0].transpose(0, 1).reshape(T, heads * hd).T  # (heads*hd, T)
        return rope_interleave(rows, heads).T.reshape(T, heads, hd).transpose(0, 1)

    px = permute(x)
    even, odd = px[..., 0::2], px[..., 1::2]
    adjacent = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    assert torch.allclose(adjacent, permute(ours), atol=1e-6)


@pytest.mark.parametrize("option, value", [("norm", "layernorm"), ("mlp", "gelu"), ("pos", "learned"),
                                           ("attention_pattern", "alternating"), ("mlp", "relu2"),
                                           ("qk_norm", True), ("logit_softcap", 15.0), ("value_embeds", True)])
def test_configs_llama_cpp_cannot_run_are_refused_naming_the_option(tmp_path, tokenizer_file, option, value):
    model = GPT(GPTConfig(vocab_size=320, n_layer=2, n_head=2, d_model=32, block_size=32, **{option: value}))
    with pytest.raises(InputError, match=f"pretrain.model.{option}: {value} cannot be represented in GGUF"):
        export_gguf(model, tokenizer_file, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_exits_2_on_a_refused_config_and_writes_a_gguf_file_otherwise(tmp_path, tokenizer_file, capsys):
    import shutil

    root = tmp_path / "repo"
    (root / "data" / "tokenizer").mkdir(parents=True)
    shutil.copyfile(tokenizer_file, root / "data" / "tokenizer" / "tokenizer.json")
    base = dict(vocab_size=320, n_layer=1, n_head=2, d_model=32, block_size=32)
    save_model(GPT(GPTConfig(**base, norm="layernorm")), root / "data" / "model")
    assert main(["--root", str(root), "export", "--format", "gguf", str(tmp_path / "x.gguf")]) == 2
    assert "pretrain.model.norm: layernorm cannot be represented in GGUF" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
    save_model(GPT(GPTConfig(**base)), root / "data" / "model")
    assert main(["--root", str(root), "export", "--format", "gguf", "--dtype", "f16",
                 str(tmp_path / "x.gguf")]) == 0
    assert gguf.GGUFReader(tmp_path / "x.gguf").tensors[0].tensor_type == gguf.GGMLQuantizationType.F16
    assert main(["--root", str(root), "export", "--dtype", "f16", str(tmp_path / "hf")]) == 2
