"""The model card (llmpipe/ops/card.py) on a synthetic workspace: the files a pipeline run writes, some of
them left out."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from llmpipe.cli import main
from llmpipe.config.tokens import TokenizerParams
from llmpipe.ops.card import build_card
from llmpipe.ops.card_html import marked

FILTER = {"docs_in": 77, "docs_out": 74, "bytes_in": 9543059, "bytes_out": 9324590,
          "removed_gopher_repetition_docs": 1, "removed_gopher_repetition_bytes": 128164,
          "removed_fineweb_short_lines_docs": 2, "removed_fineweb_short_lines_bytes": 2096,
          "removed_language_docs": 0, "removed_language_bytes": 0, "seconds": 6.5}
FILES = {
    "data/metrics/scrape.json": {"docs_in": 77, "docs_out": 77, "bytes_out": 9543059, "skipped": 0},
    "data/scrape/report.json": {"examples": {}, "skipped": {"http_error": 3}},
    "data/metrics/filter.json": FILTER,
    "data/filter/report.json": {"gopher_repetition": {"bytes": 128164, "docs": 1, "examples": [
        {"id": "a", "reason": "duplicate lines 30%", "text": "..."}]}},
    "data/metrics/dedup.json": {"docs_in": 74, "docs_out": 71, "bytes_in": 9324590, "bytes_removed": 4321,
                                "exact_dups": 2, "near_dups": 1, "removed_as_duplicate_of_reference": 0},
    "data/metrics/tokenizer.json": {"vocab_size": 512, "eot_id": 0, "train_docs": 68},
    "data/metrics/tokenize.json": {"train_tokens": 2582576, "val_tokens": 193211, "train_bytes": 8694758,
                                   "val_bytes": 629832},
    "data/tokens/manifest.json": {"docs": {"train": 64, "val": 7}, "bytes": {"train": 8694758, "val": 629832},
                                  "vocab_size": 512},
    "data/tokenizer/tokenizer.json": {"added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": True},
                                                       {"id": 1, "content": "<|user|>", "special": True}]},
    "data/metrics/pretrain.json": {"precision": "bfloat16", "cpu": "AMD EPYC", "cpu_bf16_units": "avx512_bf16",
                                   "params": 131392, "model_dvc_md5": "abc.dir", "final_val_loss": 5.2855},
    "data/metrics/evaluate.json": {"bits_per_byte": 2.137, "ngram_bits_per_byte": 2.3254,
                                   "compressor_bits_per_byte": 2.6846, "bytes_per_token": 2.104},
    # fields other helpers add (baselines, intervals): shown as they come
    "data/metrics/chat-eval.json": {"base_acc": 0.02, "finetuned_acc": 0.31, "best_baseline_acc": 0.12,
                                    "gain_over_best_baseline": 0.19, "gain_ci_low": 0.13, "gain_ci_high": 0.25},
}
TSV = {
    "data/plots/train.tsv": "step\ttokens\tloss\n" + "".join(f"{s}\t{s * 512}\t{6 - s / 10:.4f}\n" for s in range(1, 31)),
    "data/plots/val.tsv": "step\ttokens\tval_loss\n10\t5120\t5.37\n20\t10240\t5.31\n30\t15360\t5.2855\n",
    "data/plots/bench.tsv": "step\ttokens\thellaswag_acc_norm\tacc_norm\n10\t5120\t0.25\t0.25\n30\t15360\t0.5\t0.5\n",
}
# left out: samples, benchmark results, dvc.lock, the trace index


def workspace(root: Path) -> Path:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(data, indent=2))
    for rel, text in TSV.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "params.yaml").write_text(yaml.safe_dump({"tokenizer": {"vocab_size": 512}, "tracking": {"experiment": "x"}}))
    return root


class Cells(HTMLParser):
    """Every table cell (attributes, text), every figure caption, the SVG paths and marks."""

    def __init__(self):
        super().__init__()
        self.cells, self.captions, self.paths, self.tags = [], [], [], []
        self._open = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th", "figcaption", "caption"):
            self._open = [tag, dict(attrs), ""]
        if tag == "path":
            self.paths.append(dict(attrs))

    def handle_data(self, data):
        if self._open:
            self._open[2] += data

    def handle_endtag(self, tag):
        if self._open and tag == self._open[0]:
            (self.cells if tag in ("td", "th") else self.captions).append(tuple(self._open))
            self._open = None


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(e[-+]?\d+)?$")


def test_card_is_byte_identical_and_every_number_names_the_file_it_came_from(tmp_path):
    root = workspace(tmp_path)
    html = build_card(root, root / "params.yaml")
    assert build_card(root, root / "params.yaml") == html  # no clock, sorted keys, fixed formats
    page = parse(html)
    numbers = [(attrs, text) for tag, attrs, text in page.cells if tag == "td" and NUMBER.match(text.strip())]
    assert len(numbers) > 40
    not_files = ("llmpipe/config defaults", "platform.", "importlib.metadata", "/proc/cpuinfo")
    for attrs, text in numbers:
        source = attrs.get("title", "")
        assert source.startswith("source: "), text
        where = source.removeprefix("source: ").split(":")[0]
        assert where.startswith(not_files) or (root / where).is_file() or where == "params.yaml", source
    # the figures name their files too
    assert all(text.startswith("source: ") for tag, _, text in page.captions)
    # the numbers are the files': the funnel's filter row, a rule, a derived value and a generic key
    by_source = {attrs["title"]: text for attrs, text in numbers}
    assert by_source["source: data/metrics/filter.json: docs_out"] == "74"
    assert by_source["source: data/metrics/filter.json: removed_fineweb_short_lines_docs"] == "2"
    assert by_source["source: data/metrics/dedup.json: bytes_in - bytes_removed"] == f"{9324590 - 4321:,}"
    assert by_source["source: data/metrics/tokenize.json: val_bytes / val_tokens"] == f"{629832 / 193211:.4f}"
    assert by_source["source: data/metrics/chat-eval.json: gain_ci_low"] == "0.1300"
    assert by_source["source: data/metrics/evaluate.json: ngram_bits_per_byte"] == "2.3254"
    assert by_source["source: data/scrape/report.json: skipped.http_error"] == "3"
    # a params leaf that differs from the default, with the default beside it
    assert by_source["source: params.yaml: tokenizer.vocab_size"] == "512"
    default = str(TokenizerParams().vocab_size)
    assert default != "512" and by_source["source: llmpipe/config defaults: tokenizer.vocab_size"] == default
    # the loss chart: one path per curve, every point of the file
    series = {p["data-series"]: int(p["data-points"]) for p in page.paths if "data-series" in p}
    assert series["train loss"] == 30 and series["val loss"] == 3 and series["hellaswag"] == 2
    # offline: nothing to load
    assert not [t for t, a in page.tags if t in ("script", "img", "link", "iframe")]
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_missing_parts_are_named_not_fatal(tmp_path):
    root = workspace(tmp_path)
    (root / "data/plots/val.tsv").unlink()
    html = build_card(root, root / "params.yaml")
    missing = html.split('<section id="missing"', 1)[1].split("</section>", 1)[0]
    for rel in ("data/samples/samples.jsonl", "data/evals/benchmark.json", "dvc.lock", "data/plots/val.tsv"):
        assert rel in missing
    assert "dvc repro sample" in missing  # and which stage makes it
    assert "data/metrics/filter.json" not in missing
    series = {p["data-series"] for p in parse(html).paths if "data-series" in p}
    assert "train loss" in series and "val loss" not in series
    # an empty workspace: a card of what is missing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "data/metrics/pretrain.json" in build_card(empty, empty / "params.yaml")


def test_marks_name_the_documents_and_never_nest():
    text = "to be <or> not to be, that is"
    doc = {"id": "hamlet", "source": "demo", "location": "hamlet.txt", "token_offset": 7}
    spans = [{"start": 0, "end": 15, "tokens": 8, "count": 2, "docs": [doc]},
             {"start": 10, "end": 20, "tokens": 9, "count": 1, "docs": [doc]}]
    html = marked(text, spans)
    assert html.count("<mark") == 2 and "&lt;or&gt;" in html
    assert re.sub(r"<[^>]+>", "", html).replace("&lt;", "<").replace("&gt;", ">") == text
    assert 'title="8 tokens found verbatim 2 time(s) in the training documents: hamlet (demo hamlet.txt, token 7)' in html


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def test_model_version_reads_its_commits_files_and_gets_the_card(tmp_path, monkeypatch):
    """A registered version made at an earlier commit: its files are the ones that commit's dvc.lock
    names (here from DVC's cache, the workspace holding a newer run), a file the cache lacks is named,
    and the command logs the card to the version's run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = workspace(tmp_path)
    old_eval = json.dumps({"bits_per_byte": 2.9}).encode()
    md5 = hashlib.md5(old_eval).hexdigest()
    cached = root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(old_eval)
    outs = [{"path": "data/metrics/evaluate.json", "hash": "md5", "md5": md5},
            {"path": "data/metrics/filter.json", "hash": "md5", "md5": "0" * 32},  # in no cache
            {"path": "data/model", "hash": "md5", "md5": "old.dir"}]
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"pretrain": {"outs": outs}}}))
    for args in (("init", "-q"), ("config", "user.email", "t@example.com"), ("config", "user.name", "t"),
                 ("add", "dvc.lock", "params.yaml"), ("commit", "-qm", "run")):
        git(root, *args)
    commit = git(root, "rev-parse", "HEAD")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.create_registered_model("m")
    client.create_model_version("m", source=str(root), run_id=run_id,
                                tags={"git.commit": commit, "dvc.out.data/model": "old.dir", "train.precision": "fp32"})
    html = build_card(root, root / "params.yaml", "models:/m/1")
    assert 'title="source: data/metrics/evaluate.json: bits_per_byte">2.9000<' in html  # not the workspace's 2.137
    assert "data/metrics/filter.json: its version " + "0" * 32 in html and "dvc pull" in html
    assert f"git commit {commit}" in html and run_id in html and "fp32" in html
    assert "data/plots/train.tsv: not in dvc.lock at" in html
    assert main(["--root", str(root), "card", "models:/m/1", "--out", "card.html"]) == 0
    assert (root / "card.html").read_text() == html
    assert [a.path for a in client.list_artifacts(run_id)] == ["card.html"]
    with pytest.raises(Exception, match="not a git revision"):
        build_card(root, root / "params.yaml", "models:/m/7")
