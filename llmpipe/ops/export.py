"""Export a trained model as a Hugging Face model folder, so tools outside llmpipe can use it.

Our RMSNorm + RoPE + SwiGLU decoder is, weight for weight, Llama: the same pre-norm blocks, the same
half-split rotary convention, the same gated MLP. We map onto `LlamaForCausalLM` (config.json,
model.safetensors, tokenizer files) and nothing else is needed to load it:
`transformers.AutoModelForCausalLM.from_pretrained(out)`. That opens the door to lm-evaluation-harness,
vLLM and llama.cpp's converter. transformers itself is not needed to write the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmpipe.model.gpt import GPT
from llmpipe.tokens.bpe import CHAT_TOKENS, EOT
from llmpipe.tokens.chat import CHAT_TEMPLATE
from llmpipe.util.io import InputError, atomic_dir, write_json


def check_llama_compatible(model: GPT, target: str = "a Hugging Face Llama model") -> None:
    """Refuse, naming each option, a model that Llama's architecture cannot express (dropout does not
    matter at inference; attention_window only with the alternating pattern)."""
    cfg = model.cfg
    need = {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope", "attention_pattern": "dense"}
    # issue 18's recipe options: Llama has no QK-norm, soft-cap or value embeddings; a zero-init head
    # is only an initialization and exports as it trained
    need.update({"qk_norm": False, "logit_softcap": None, "value_embeds": False})
    wrong = [f"pretrain.model.{k}: {getattr(cfg, k)} cannot be represented in {target} (needs {v})"
             for k, v in need.items() if getattr(cfg, k) != v]
    if wrong:
        raise InputError("; ".join(wrong))


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    q_rows, kv_rows, ffn = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_dim
    out = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm_f.weight}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        qkv = block.attn.qkv_proj.weight  # rows: [q; k; v]
        up = block.mlp.up.weight  # rows: [gate; value], as our SwiGLU chunks them
        out.update({
            p + "input_layernorm.weight": block.norm1.weight,
            p + "self_attn.q_proj.weight": qkv[:q_rows],
            p + "self_attn.k_proj.weight": qkv[q_rows : q_rows + kv_rows],
            p + "self_attn.v_proj.weight": qkv[q_rows + kv_rows :],
            p + "self_attn.o_proj.weight": block.attn.o_proj.weight,
            p + "post_attention_layernorm.weight": block.norm2.weight,
            p + "mlp.gate_proj.weight": up[:ffn],
            p + "mlp.up_proj.weight": up[ffn:],
            p + "mlp.down_proj.weight": block.mlp.down.weight,
        })
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in out.items()}


def llama_config(model: GPT, eot_id: int) -> dict:
    cfg = model.cfg
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": 1e-6,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def chat_config(tokenizer_json: dict) -> dict:
    """The chat template (llmpipe.tokens.chat), for tokenizers that reserve the chat markers: then
    transformers' apply_chat_template renders conversations exactly as llmpipe does."""
    added = {t["content"] for t in tokenizer_json.get("added_tokens", [])}
    if not set(CHAT_TOKENS) <= added:
        return {}
    return {"chat_template": CHAT_TEMPLATE}


def export_hf(model: GPT, tokenizer_path: Path, out_dir: Path) -> Path:
    """Write a Hugging Face model folder (atomically: the folder appears whole or not at all)."""
    check_llama_compatible(model)
    tok = json.loads(Path(tokenizer_path).read_text(encoding="utf-8"))
    eot_id = next((t["id"] for t in tok.get("added_tokens", []) if t["content"] == EOT), None)
    if eot_id is None:
        raise InputError(f"{tokenizer_path}: has no {EOT} token")
    with atomic_dir(out_dir) as tmp:
        save_file(llama_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", llama_config(model, eot_id))
        write_json(tmp / "generation_config.json", {"bos_token_id": eot_id, "eos_token_id": eot_id})
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
        write_json(tmp / "special_tokens_map.json", special)
        write_json(tmp / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                   "model_max_length": model.cfg.block_size,
                                                   "clean_up_tokenization_spaces": False, **special,
                                                   **chat_config(tok)})
    return out_dir


def command(args) -> None:
    from llmpipe.model.weights import load_model
    from llmpipe.ops.models import export_source

    if args.dtype != "f32":
        raise InputError(f"--dtype {args.dtype}: the hf format is written in f32")
    with export_source(args) as (model_dir, tokenizer):
        out = export_hf(load_model(model_dir), tokenizer, args.out)
    print(f"wrote a Hugging Face model folder of {model_dir} to {out}")
