"""`llmpipe card` on the tiny pipeline's run (every stage, trace-index included): the page is written,
rebuilt byte for byte, logged to the model's MLflow run, and, opened in headless Chromium with no
network, shows the funnel's numbers, the loss chart, and a sample's span traced into the training data."""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import pytest

from tests.browser import headless_chromium, require_chromium
from tests.conftest import clone_repo, run

pytestmark = pytest.mark.integration

OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
           "--proxy-bypass-list=<-loopback>"]


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory):
    return clone_repo(tiny_pipeline, tmp_path_factory.mktemp("card") / "repo")


def test_card_is_written_rebuilt_identically_and_logged_to_the_models_run(repo):
    from mlflow.tracking import MlflowClient

    from llmpipe.ops.card import build_card
    from llmpipe.ops.tracking import run_of_weights

    proc = run([sys.executable, "-m", "llmpipe.cli", "card"], repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (repo / "data/card.html").read_text()
    t0 = time.perf_counter()
    assert build_card(repo, repo / "params.yaml") == html  # another process, the same bytes
    print(f"card built in {time.perf_counter() - t0:.2f} s")
    assert '<section id="missing"' not in html  # the whole pipeline ran: nothing is missing
    weights = json.loads((repo / "data/metrics/pretrain.json").read_text())["model_dvc_md5"]
    run_id = run_of_weights(repo, "llmpipe-gpt", weights)
    assert run_id and "logged to MLflow run " + run_id in proc.stdout
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert "card.html" in [a.path for a in client.list_artifacts(run_id)]


def test_card_in_a_browser_offline(repo, tmp_path):
    require_chromium()
    from selenium.webdriver.common.by import By

    from llmpipe.ops.card import build_card
    from llmpipe.tokens.trace import Tracer

    # a sample that repeats a training passage, as an overfit model would: the card must mark it
    tracer = Tracer(repo / "data/trace", repo / "data/tokenizer/tokenizer.json")
    passage = tracer.tokenizer.decode([int(t) for t in tracer.index.tokens[2000:2040]])
    samples = repo / "data/samples/samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    rows[0]["completion"] = " and so " + passage + " the end"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = tmp_path / "card.html"
    page.write_text(build_card(repo, repo / "params.yaml"))
    docs = set(pd.read_parquet(repo / "data/trace/docs.parquet")["id"])
    filt = json.loads((repo / "data/metrics/filter.json").read_text())
    train_rows = (repo / "data/plots/train.tsv").read_text().strip().count("\n")

    driver = headless_chromium(tmp_path / "chromium-profile", OFFLINE)
    try:
        driver.get(page.as_uri())
        funnel = driver.find_element(By.CSS_SELECTOR, "#funnel table")
        filter_row = [r for r in funnel.find_elements(By.CSS_SELECTOR, "tbody tr")
                      if r.find_element(By.TAG_NAME, "td").text == "filter"][0]
        cells = [c.text for c in filter_row.find_elements(By.TAG_NAME, "td")]
        assert cells[1:5] == [f"{filt[k]:,}" for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")]
        loss = driver.find_element(By.CSS_SELECTOR, "#curves svg path.series[data-series='train loss']")
        assert loss.is_displayed() and loss.get_attribute("d").count("L") == train_rows - 1
        assert loss.size["width"] > 100  # drawn across the plot, not collapsed
        marks = driver.find_elements(By.CSS_SELECTOR, "#samples mark")
        assert marks and all(m.is_displayed() for m in marks)
        squeeze = lambda text: " ".join(text.split())  # noqa: E731 - as rendered, whitespace aside
        middle = squeeze(passage)[len(squeeze(passage)) // 2 - 10:][:20]
        assert middle in squeeze(" ".join(m.text for m in marks))
        assert any(doc in marks[0].get_attribute("title") for doc in docs)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        # nothing loaded besides the page itself
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    finally:
        driver.quit()
