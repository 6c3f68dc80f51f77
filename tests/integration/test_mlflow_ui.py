"""Comparing runs: the tiny pipeline run twice with different params — a `dvc repro`, then a
`dvc exp run -S pretrain.lr=...` — against a real `mlflow server` on 127.0.0.1; DVC's experiment table
and metrics diff show the change; headless Chromium (Debian's chromium and chromedriver, driven by
Selenium; .ci/run installs them) finds both runs on the MLflow experiment page and their metrics in the
compare view. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.browser import headless_chromium, require_chromium
from tests.conftest import REPO, TINY_PARAMS, copy_repo, free_port, local_server, run

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "artifacts")]
    with local_server(cmd, f"http://127.0.0.1:{port}/health", home / "server.log"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def two_runs(mlflow_server, tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("ui") / "repo", TINY_PARAMS)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    first = run(["dvc", "repro"], repo, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    git = ["git", "-c", "user.email=test@llmpipe.local", "-c", "user.name=llmpipe test"]
    assert run(git + ["add", "-A"], repo).returncode == 0  # the baseline: dvc.lock committed
    assert run(git + ["commit", "-qm", "baseline run"], repo).returncode == 0
    second = run(["dvc", "exp", "run", "-S", "pretrain.lr=0.002", "-n", "lower-lr"], repo, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return repo


def test_dvc_experiments_show_the_metrics_of_both_runs(two_runs):
    show = run(["dvc", "exp", "show", "--json"], two_runs)
    assert show.returncode == 0, show.stderr[-2000:]
    text = show.stdout
    assert "lower-lr" in text and "bits_per_byte" in text and "0.002" in text
    diff = run(["dvc", "metrics", "diff", "HEAD", "lower-lr", "--json"], two_runs)
    assert diff.returncode == 0, diff.stderr[-2000:]
    changed = json.loads(diff.stdout)
    assert "bits_per_byte" in changed["data/metrics/evaluate.json"]
    plots = run(["dvc", "plots", "diff", "HEAD", "lower-lr", "--json"], two_runs)
    assert plots.returncode == 0 and "val_loss" in plots.stdout


def pretrain_runs(url: str) -> tuple[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(TINY_PARAMS["tracking"]["experiment"])
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("llmpipe.stage") == "pretrain"]
    return exp.experiment_id, runs


def test_mlflow_ui_lists_and_compares_both_runs(mlflow_server, two_runs):
    require_chromium()
    from selenium.webdriver.support.ui import WebDriverWait

    exp_id, runs = pretrain_runs(mlflow_server)
    first_lr = str(TINY_PARAMS["pretrain"]["lr"])
    assert len(runs) == 2 and {r.data.params["pretrain.lr"] for r in runs} == {first_lr, "0.002"}
    assert all("val_loss" in r.data.metrics for r in runs)
    driver = headless_chromium(two_runs.parent / 'chromium-profile')
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        ids = [r.info.run_id for r in runs]
        driver.get(f"{mlflow_server}/#/experiments/{exp_id}/runs")
        # every row of the runs table links to its run: both pretraining runs must be listed
        WebDriverWait(driver, 120).until(lambda d: all(i in d.page_source for i in ids))
        time.sleep(2)  # let the table finish rendering
        driver.save_screenshot(str(ARTIFACTS / "mlflow-experiment.png"))
        assert "matching runs" in driver.find_element("tag name", "body").text

        runs_arg = json.dumps(ids).replace(" ", "")
        driver.get(f"{mlflow_server}/#/compare-runs?runs={runs_arg}&experiments={json.dumps([exp_id])}")
        WebDriverWait(driver, 120).until(lambda d: "val_loss" in d.find_element("tag name", "body").text)
        time.sleep(2)
        driver.save_screenshot(str(ARTIFACTS / "mlflow-compare.png"))
        body = driver.find_element("tag name", "body").text
        assert "val_loss" in body and "pretrain.lr" in body and "0.002" in body and first_lr in body
    finally:
        driver.quit()
    assert (ARTIFACTS / "mlflow-compare.png").stat().st_size > 10_000
