"""Export a trained model as one GGUF file, the format llama.cpp (and Ollama, LM Studio ...) runs.

The weights are the Llama mapping of the Hugging Face export (llmpipe.ops.export.llama_state_dict),
renamed to llama.cpp's tensor names. We write GGUF ourselves with the `gguf` package rather than run
llama.cpp's convert_hf_to_gguf.py on the HF folder: that converter recognises a BPE pre-tokenizer only
by a hash of known models' tokenizer outputs and refuses ours, although ours is exactly GPT-2's byte-level
split, which llama.cpp implements as `tokenizer.ggml.pre = "gpt-2"`. Setting the field ourselves gives
token ids equal to our tokenizer's (tested with llama-cpp-python).

Layout: `out` ending in `.gguf` is the file itself; anything else is a folder that receives `model.gguf`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from llmpipe.model.gpt import GPT
from llmpipe.ops.export import chat_config, check_llama_compatible, llama_state_dict
from llmpipe.tokens.bpe import EOT
from llmpipe.tokens.chat import END
from llmpipe.util.io import InputError, atomic_path

log = logging.getLogger(__name__)

FILE_NAME = "model.gguf"
DTYPES = ("f32", "f16")


def gguf_path(out: Path) -> Path:
    out = Path(out)
    return out if out.suffix == ".gguf" else out / FILE_NAME


def rope_interleave(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection from the half-split rotary convention (ours and HF
    Llama's: channel i pairs with i + hd/2) to llama.cpp's LLAMA rope, which rotates adjacent pairs
    (2i, 2i+1). Per head, new row 2i is old row i and new row 2i+1 is old row hd/2 + i; the attention
    scores are unchanged because q and k are permuted alike."""
    rows, cols = w.shape
    hd = rows // heads
    return w.reshape(heads, 2, hd // 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """llama.cpp's names for the Llama state dict. With tied embeddings `output.weight` is left out:
    llama.cpp then uses token_embd for the output projection."""
    cfg = model.cfg
    hf = llama_state_dict(model)
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    if "lm_head.weight" in hf:
        out["output.weight"] = hf["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for theirs, ours in names.items():
            w = hf[f"model.layers.{i}.{theirs}.weight"]
            if ours == "attn_q":
                w = rope_interleave(w, cfg.n_head)
            elif ours == "attn_k":
                w = rope_interleave(w, cfg.kv_heads)
            out[f"blk.{i}.{ours}.weight"] = w
    return out


def read_vocab(tokenizer_path: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], int]:
    """Tokens by id, their GGUF token types, merges as "a b" strings, and the <|endoftext|> id, from a
    byte-level BPE tokenizer.json. Rows of the embedding past the tokenizer's vocabulary (none in
    llmpipe's own models) get unused placeholder tokens, as llama.cpp wants one token per row."""
    import gguf

    path = Path(tokenizer_path)
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        model, pre = tok["model"], tok.get("pre_tokenizer") or {}
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path}: not a readable tokenizer.json ({err})") from err
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise InputError(f"{path}: GGUF export needs byte-level BPE with GPT-2's split regex "
                         f"(model {model.get('type')}, pre_tokenizer {pre.get('type')})")
    if tok.get("normalizer"):  # llama.cpp's gpt-2 pre-tokenizer does not normalize
        log.warning("%s: has a normalizer (tokenizer.nfc); llama.cpp skips it, so non-NFC input may "
                    "tokenize differently there", path)
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in tok.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if by_id and max(by_id) >= vocab_size:
        raise InputError(f"{path}: token id {max(by_id)} is outside the model's vocabulary ({vocab_size})")
    eot_id = next((i for i, (t, _) in by_id.items() if t == EOT), None)
    if eot_id is None:
        raise InputError(f"{path}: has no {EOT} token")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    # tokenizers writes merges as "a b" strings (older) or [a, b] pairs (newer); GGUF wants strings.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, eot_id


def export_gguf(model: GPT, tokenizer_path: Path, out: Path, dtype: str = "f32", name: str = "llmpipe-gpt") -> Path:
    """Write `out` (a .gguf file, or a folder receiving model.gguf) atomically; return the file's path.
    dtype f16 stores the matrices in half precision and keeps the norm weights in f32, as llama.cpp's
    own converter does."""
    import gguf

    check_llama_compatible(model, target="GGUF's llama architecture")
    if dtype not in DTYPES:
        raise InputError(f"--dtype: {dtype} is not one of {DTYPES}")
    cfg = model.cfg
    tokens, types, merges, eot_id = read_vocab(tokenizer_path, cfg.vocab_size)
    tensors = gguf_tensors(model)
    dest = gguf_path(out)
    with atomic_path(dest) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.ffn_dim)
        writer.add_head_count(cfg.n_head)
        writer.add_head_count_kv(cfg.kv_heads)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_base)
        writer.add_layer_norm_rms_eps(model.norm_f.eps)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(eot_id)
        writer.add_eos_token_id(eot_id)
        # our model never saw a BOS before a prompt: llama.cpp must not prepend one either
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
        chat = chat_config(json.loads(Path(tokenizer_path).read_text(encoding="utf-8")))
        if chat:  # the HF export's template: llama.cpp's chat completion renders llmpipe's ids with it,
            writer.add_chat_template(chat["chat_template"])
            writer.add_eot_token_id(tokens.index(END))  # and a reply ends at <|end|>
        for key, w in tensors.items():
            arr = w.numpy()
            if dtype == "f16" and arr.ndim == 2:
                arr = arr.astype(np.float16)
            writer.add_tensor(key, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return dest


def command(args) -> None:
    from llmpipe.model.weights import load_model
    from llmpipe.ops.models import export_source

    with export_source(args) as (model_dir, tokenizer):
        out = export_gguf(load_model(model_dir), tokenizer, args.out, dtype=args.dtype)
    print(f"wrote a GGUF file ({args.dtype}) of {model_dir} to {out}")
