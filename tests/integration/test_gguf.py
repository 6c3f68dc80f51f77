"""`llmpipe export --format gguf` of the tiny pipeline's trained model runs in llama.cpp (through
llama-cpp-python) as it runs in llmpipe: the same token ids, the same 32 greedy tokens, close logits; its
chat template renders llmpipe's prompt through llama.cpp's Jinja path, and its built-in template
detection (llama.cpp without --jinja) renders another layout, which the docs warn about."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest
import torch

from tests.conftest import run

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp")

# The tiny model's context is 64 tokens: each prompt plus 32 new tokens must fit in it.
GEN_PROMPTS = ["ROMEO.\n", "Enter KING", "What, my lord, "]
TOKENIZE_TEXTS = GEN_PROMPTS + ["It is 1234 o'clock; café — ça va?\n\n   Yes!! I'll've don't",
                                "\tTabs,  double  spaces and 🤖 emoji", "  leading spaces\r\n"]
NEW_TOKENS = 32
# f32 on both sides, llama.cpp's KV cache included (its default cache is f16, which alone moves logits
# by up to ~3e-2 on a small model): the rest is summation order, 3e-5 measured on a 2-layer model with
# logits up to 9. 2e-3 leaves room for other CPUs' kernels.
LOGIT_TOL = 2e-3


@contextlib.contextmanager
def llama(path, n_ctx):
    # Closed explicitly: the finalizer of an unclosed Llama raises a TypeError at interpreter exit.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False, seed=0,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        yield llm
    finally:
        llm.close()


@pytest.fixture(scope="module")
def exported(tiny_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    proc = run([sys.executable, "-m", "llmpipe.cli", "export", "--format", "gguf", "--model", "base", str(out)],
               tiny_pipeline)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tokenizers import Tokenizer

    from llmpipe.model.weights import load_model

    model = load_model(tiny_pipeline / "data" / "model")
    tok = Tokenizer.from_file(str(tiny_pipeline / "data" / "tokenizer" / "tokenizer.json"))
    return out / "model.gguf", model, tok


def test_llama_cpp_tokenizes_generates_and_scores_as_llmpipe(exported):
    from llmpipe.training.generate import generate_batch

    path, model, tok = exported
    block = model.cfg.block_size
    prompts = [tok.encode(p).ids for p in GEN_PROMPTS]
    assert max(len(p) for p in prompts) + NEW_TOKENS <= block
    ours = generate_batch(model, prompts, NEW_TOKENS, temperature=0.0)
    with llama(path, n_ctx=block) as llm:
        # llama.cpp rounds its context up (to 256 here); the model's own is the file's context_length
        assert llm.n_vocab() == model.cfg.vocab_size and llm.metadata["llama.context_length"] == str(block)
        for text in TOKENIZE_TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text).ids, text
        for prompt, mine in zip(prompts, ours):
            theirs = []
            for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
                theirs.append(token)
                if len(theirs) == NEW_TOKENS:
                    break
            assert theirs == mine, tok.decode(prompt)
        # logits at every position of a prompt plus its greedy continuation
        seq = prompts[0] + ours[0]
        llm.reset()
        llm.eval(seq)
        cpp = np.asarray(llm.scores[: len(seq)])
    with torch.no_grad():
        ref = model(torch.tensor([seq]))[0][0].float().numpy()
    assert np.abs(cpp - ref).max() < LOGIT_TOL


def test_f16_export_loads_and_stays_close(exported, tiny_pipeline, tmp_path):
    path, model, tok = exported
    out = tmp_path / "half.gguf"
    proc = run([sys.executable, "-m", "llmpipe.cli", "export", "--format", "gguf", "--dtype", "f16", "--model", "base",
                str(out)], tiny_pipeline)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size < path.stat().st_size * 0.6
    seq = tok.encode(GEN_PROMPTS[0] + "I will not speak of it").ids
    with llama(out, n_ctx=model.cfg.block_size) as llm:
        llm.eval(seq)
        cpp = np.asarray(llm.scores[: len(seq)])
    with torch.no_grad():
        ref = model(torch.tensor([seq]))[0][0].float().numpy()
    # half-precision weights: about 3 significant digits per weight
    assert np.abs(cpp - ref).max() < 5e-2
    assert (cpp.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_llama_cpp_chat_completion_renders_and_answers_as_llmpipe(exported):
    # The GGUF file carries the chat template and <|end|> as the end of a turn (llmpipe.ops.gguf):
    # llama-cpp-python's own chat handler then gives the model llmpipe's prompt ids.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llmpipe.tokens.chat import CHAT_TEMPLATE, ChatFormat
    from llmpipe.training.generate import generate_batch

    path, model, tok = exported
    fmt = ChatFormat(tok)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who is Romeo?"}]
    prompt = fmt.prompt(messages)
    mine = generate_batch(model, [prompt], 8, temperature=0.0)[0]
    mine = mine[:next((i for i, t in enumerate(mine) if t in fmt.stop_ids), len(mine))]
    with llama(path, n_ctx=model.cfg.block_size) as llm:
        assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
        eot = tok.id_to_token(0)
        rendered = Jinja2ChatFormatter(CHAT_TEMPLATE, eos_token=eot, bos_token=eot)(messages=messages).prompt
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == prompt
        reply = llm.create_chat_completion(messages, max_tokens=8, temperature=0.0, repeat_penalty=1.0, seed=0)
    assert reply["choices"][0]["message"]["content"] == tok.decode(mine)


def builtin_template_render(template: str, messages: list[dict]) -> str | None:
    """llama.cpp's own chat templating (llama_chat_apply_template, what llama-server and llama-cli use
    without --jinja): it recognises a template by its markers and renders that known layout; None when
    it recognises none."""
    import ctypes

    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages])
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(messages), True, buf, len(buf))
    return buf.raw[:n].decode() if n >= 0 else None


def test_the_chat_prompt_needs_llama_cpps_jinja_path(exported):
    """The docs' advice (`--jinja`), checked: the GGUF's template through Jinja gives llmpipe's prompt ids;
    llama.cpp's built-in detection takes our markers for Phi-3's and renders Phi-3's layout (a newline
    after each marker, no <|endoftext|> first), which the model was never trained on. When this test
    fails because the two agree, the docs' warning can go."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llmpipe.tokens.chat import ChatFormat

    path, model, tok = exported
    fmt, eot = ChatFormat(tok), tok.id_to_token(0)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who is Romeo?"}]
    with llama(path, n_ctx=model.cfg.block_size) as llm:
        template = llm.metadata["tokenizer.chat_template"]
        jinja = Jinja2ChatFormatter(template, eos_token=eot, bos_token=eot)(messages=messages).prompt
        builtin = builtin_template_render(template, messages)
        assert llm.tokenize(jinja.encode(), add_bos=False, special=True) == fmt.prompt(messages)
        assert builtin is not None and llm.tokenize(builtin.encode(), add_bos=False, special=True) != fmt.prompt(messages)
    assert builtin == "<|system|>\nAnswer briefly.<|end|>\n<|user|>\nWho is Romeo?<|end|>\n<|assistant|>\n"
