"""Tracing on the tiny pipeline (issue 28): `llmpipe trace` on the command line, `/v1/trace` on a real
server on 127.0.0.1, and the web chat in headless Chromium marking the traced spans of a reply."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pandas as pd
import pytest

from llmpipe.tokens.shards import read_shard
from tests.browser import headless_chromium, require_chromium, send_in_web_chat
from tests.conftest import free_port, local_server

pytestmark = pytest.mark.integration


def training_text(repo, n_tokens=40):
    """A stretch of a training document's text, decoded from its tokens, and the document's id."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(repo / "data/tokenizer/tokenizer.json"))
    docs = pd.read_parquet(repo / "data/tokens/train_docs.parquet")
    doc = docs.iloc[1]
    tokens = read_shard(repo / "data/tokens/train_000000.bin")
    start = int(doc["start"]) + 50
    return tok.decode(tokens[start : start + n_tokens].tolist()), str(doc["id"])


def test_cli_traces_a_training_passage_to_its_document(tiny_pipeline):
    text, doc_id = training_text(tiny_pipeline)
    proc = subprocess.run([sys.executable, "-m", "llmpipe.cli", "--root", str(tiny_pipeline), "trace", "--json",
                           f"Well then. {text}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spans = json.loads(proc.stdout)["spans"]
    longest = max(spans, key=lambda s: s["tokens"])
    # the passage's 40 tokens, re-encoded after other text: all but its edges match verbatim
    assert longest["tokens"] >= 36 and longest["text"] in text
    assert doc_id in {d["id"] for d in longest["docs"]}


def test_cli_names_the_stage_when_the_index_is_missing(tiny_pipeline, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "params.yaml").write_text((tiny_pipeline / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "llmpipe.cli", "--root", str(tmp_path), "trace", "anything"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "trace-index" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def server(tiny_pipeline, tmp_path_factory):
    port = free_port()
    cmd = [sys.executable, "-m", "llmpipe.cli", "--root", str(tiny_pipeline), "serve", "--port", str(port)]
    log = tmp_path_factory.mktemp("serve-trace") / "server.log"
    with local_server(cmd, f"http://127.0.0.1:{port}/health", log):
        yield f"http://127.0.0.1:{port}"


def test_v1_trace_answers_spans_and_refuses_bad_bodies(server, tiny_pipeline):
    text, doc_id = training_text(tiny_pipeline)
    got = httpx.post(f"{server}/v1/trace", json={"text": text}, timeout=60).json()
    assert got["spans"] and doc_id in {d["id"] for s in got["spans"] for d in s["docs"]}
    assert all(text[s["start"] : s["end"]] == s["text"] for s in got["spans"])
    for body, param in (({"txt": "x"}, "text"), ({"text": "x", "min_tokens": 0}, "min_tokens")):
        resp = httpx.post(f"{server}/v1/trace", json=body, timeout=60)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param


def test_web_chat_marks_the_traced_spans_of_a_reply(server, tmp_path):
    require_chromium()
    from selenium.webdriver.support.ui import WebDriverWait

    message = "Good morrow, my lord."

    def visible_spans(seed):
        body = {"model": "llmpipe", "messages": [{"role": "user", "content": message}], "max_tokens": 40,
                "temperature": 1.0, "seed": seed}
        reply = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120).json()
        text = reply["choices"][0]["message"]["content"]
        spans = httpx.post(f"{server}/v1/trace", json={"text": text, "min_tokens": 2}, timeout=60).json()["spans"]
        return [s for s in spans if s["text"].strip()]

    # a seed whose reply holds a traced span a person can see (the tiny model often says only newlines)
    seed = next((s for s in range(20) if visible_spans(s)), None)
    assert seed is not None, "no seed in 0-19 gives the tiny model a reply with a visible traced span"
    driver = headless_chromium(tmp_path / "chromium-profile")
    try:
        driver.get(server + "/")
        send_in_web_chat(driver, {"temperature": "1", "max_tokens": "40", "seed": str(seed), "min_tokens": "2"},
                         message)
        reply = WebDriverWait(driver, 90).until(
            lambda d: d.find_element("css selector", ".msg.assistant[data-state='done']"))
        WebDriverWait(driver, 60).until(lambda d: reply.get_attribute("data-trace") not in (None, "pending"))
        marks = reply.find_elements("css selector", "mark.traced")
        assert int(reply.get_attribute("data-trace")) > 0 and marks, reply.get_attribute("innerHTML")
        # what a person sees: the marked words are part of the reply, and hovering names the documents
        shown = next(m for m in marks if m.text.strip() and m.is_displayed())
        assert shown.text in reply.text
        assert "found in" in shown.get_attribute("title") and "shakespeare/" in shown.get_attribute("title")
        shown.click()
        sources = driver.find_element("id", "sources")
        WebDriverWait(driver, 10).until(lambda d: sources.is_displayed())
        assert "occurrence" in sources.text and sources.find_elements("css selector", ".doc .hit")
    finally:
        driver.quit()
