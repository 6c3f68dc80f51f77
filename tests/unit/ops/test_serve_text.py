"""The text side of `llmpipe serve`, without a model: the chat template and what streaming holds back."""

from __future__ import annotations

import pytest

from llmpipe.stages.sample import held_back
from llmpipe.ops.serve.protocol import ChatRequest, CompletionRequest, ServeError, parse
from llmpipe.ops.serve.template import CHAT_STOPS, render_chat


def test_chat_template_renders_turns_and_ends_with_the_cue():
    text = render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
                        {"role": "assistant", "content": [{"type": "text", "text": "Hail."}]},
                        {"role": "user", "content": "Bye"}])
    assert text == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hail.\n\nUser: Bye\n\nAssistant:"
    assert CHAT_STOPS == ["\nUser:"]


@pytest.mark.parametrize("text, stops, n", [
    ("Hello", ["\nUser:"], 0),
    ("Hello\n", ["\nUser:"], 1),      # could be the start of "\nUser:": not sent yet
    ("Hello\nUs", ["\nUser:"], 3),
    ("Hello\nUx", ["\nUser:"], 0),
    ("ab", ["bc", "abc"], 2),        # the longest possible start counts
    ("ab", [], 0),
])
def test_streaming_holds_back_what_could_start_a_stop_string(text, stops, n):
    assert held_back(text, stops) == n


def test_requests_are_validated_with_the_field_named():
    assert parse(CompletionRequest, {"model": "m", "prompt": "x", "stop": "\n"}).stops() == ["\n"]
    assert parse(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True})
    with pytest.raises(ServeError, match="messages.0.role") as err:
        parse(ChatRequest, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
    assert err.value.status == 400 and err.value.body()["error"]["param"] == "messages.0.role"
    with pytest.raises(ServeError, match="stop"):
        parse(CompletionRequest, {"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]})


def test_a_tokenizer_with_the_chat_markers_gets_the_chat_format(tokenizer_file):
    from tokenizers import Tokenizer

    from llmpipe.ops.serve.template import ChatTemplate
    from llmpipe.tokens.chat import ChatFormat

    tok = Tokenizer.from_file(str(tokenizer_file))
    template = ChatTemplate(tok)
    ids = template.prompt_ids([{"role": "developer", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "Hi <|end|>"}]}])
    fmt = ChatFormat(tok)
    assert ids == fmt.prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|end|>"}])
    assert template.stops == [] and template.stop_ids == {fmt.end, fmt.eot}


def test_a_tokenizer_without_them_falls_back_to_plain_text(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llmpipe.ops.serve.template import ChatTemplate
    from llmpipe.tokens.bpe import EOT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["Hello there, User and Assistant"] * 5, trainers.BpeTrainer(
        vocab_size=280, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = ChatTemplate(tok)
    messages = [{"role": "user", "content": "Hi"}]
    assert template.prompt_ids(messages) == tok.encode(render_chat(messages)).ids
    assert template.stops == CHAT_STOPS and not template.stop_ids


def test_token_bytes_join_to_the_texts_bytes(tokenizer_file):
    from tokenizers import Tokenizer

    from llmpipe.ops.serve.logprobs import TokenBytes, TokenLogprob, completion_logprobs

    tok = Tokenizer.from_file(str(tokenizer_file))
    tb = TokenBytes(tok)
    text = "To be — or not, café 🤖 <|endoftext|>"
    ids = tok.encode(text).ids
    assert b"".join(tb.bytes(i) for i in ids) == text.encode()
    assert tb.text(tok.token_to_id("<|endoftext|>")) == "<|endoftext|>"
    legacy = completion_logprobs([TokenLogprob(i, -1.0, [(i, -1.0)]) for i in ids[:3]], tb, offset=4)
    assert legacy["text_offset"][0] == 4 and legacy["token_logprobs"] == [-1.0] * 3


def test_echoed_prompt_logprobs_are_refused_naming_echo():
    """lm-eval's local-completions asks echo + logprobs for the prompt's own tokens, which the server does
    not compute: a 400 naming `echo`, not an answer silently without them."""
    with pytest.raises(ServeError) as err:
        parse(CompletionRequest, {"model": "m", "prompt": "a b", "echo": True, "logprobs": 1, "max_tokens": 1})
    assert err.value.status == 400 and err.value.param == "echo"
    assert parse(CompletionRequest, {"model": "m", "prompt": "a", "echo": True, "max_tokens": 1}).echo
    assert parse(CompletionRequest, {"model": "m", "prompt": "a", "logprobs": 2, "max_tokens": 1}).logprobs == 2
