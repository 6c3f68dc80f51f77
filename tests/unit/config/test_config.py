import subprocess
import sys

import pytest
import yaml

from llmpipe.config.base import ParamsError
from llmpipe.stages.params import Params, load_params, parse_params

REPO_PARAMS = "params.yaml"


def test_repo_params_are_valid():
    params = load_params(REPO_PARAMS)
    assert params.pretrain.model.n_layer >= 1
    assert params.dedup.num_perm == params.dedup.bands * params.dedup.rows


@pytest.mark.parametrize("data, key", [
    ({"pretrain": {"lr": "fast"}}, "pretrain.lr"),
    ({"pretrain": {"model": {"d_model": 0}}}, "pretrain.model.d_model"),
    ({"filter": {"min_lang_score": 1.5}}, "filter.min_lang_score"),
    ({"tokenizer": {"vocab_sise": 100}}, "tokenizer.vocab_sise"),
    ({"nonsense": {}}, "nonsense"),
    ({"split": {"val_fraction": 0.0}}, "split.val_fraction"),
    ({"scrape": {"sources": [{"kind": "demo", "max_docs": -1}]}}, "scrape.sources.0.max_docs"),
    ({"scrape": {"sources": [{"kind": "ftp"}]}}, "scrape.sources.0"),
])
def test_bad_params_name_the_key(data, key):
    with pytest.raises(ParamsError) as err:
        parse_params(data)
    assert key in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ParamsError, match="n_head"):
        parse_params({"pretrain": {"model": {"d_model": 100, "n_head": 3}}})
    with pytest.raises(ParamsError, match="warmup_steps"):
        parse_params({"pretrain": {"max_steps": 10, "warmup_steps": 20}})


def test_defaults_equal_an_empty_file():
    assert parse_params({}) == Params()


def llmpipe_cli(root, *args):
    return subprocess.run([sys.executable, "-m", "llmpipe.cli", "--root", str(root), *args],
                          capture_output=True, text=True)


def test_stage_exits_2_naming_its_own_key_before_any_work(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"scrape": {"max_doc_bytes": "many"}}))
    proc = llmpipe_cli(tmp_path, "scrape")
    assert proc.returncode == 2
    assert "scrape.max_doc_bytes" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started, nothing written


def test_stage_validates_only_its_sections_and_validate_checks_all(tmp_path):
    """A stage reads (and imports the models of) its own sections only, so a bad pretrain key does not
    stop tokenize; an unknown section stops every stage; `llmpipe validate` checks the whole file."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pretrain": {"max_steps": "many"}}))
    proc = llmpipe_cli(tmp_path, "tokenize")
    assert proc.returncode == 2 and "missing input data/dedup/docs.parquet" in proc.stderr, proc.stderr
    proc = llmpipe_cli(tmp_path, "validate")
    assert proc.returncode == 2 and "pretrain.max_steps" in proc.stderr
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pretrian": {"max_steps": 10}}))
    proc = llmpipe_cli(tmp_path, "tokenize")
    assert proc.returncode == 2 and "pretrian: unknown section" in proc.stderr


def test_unreadable_yaml(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("pretrain: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(p)


SEEDS = [("pretrain", "seed"), ("dedup", "seed"), ("split", "seed"), ("sample", "seed")]


@pytest.mark.parametrize("section, key", SEEDS)
@pytest.mark.parametrize("value", [-1338, -1, 2**32])
def test_seeds_outside_what_the_generators_accept_are_refused(section, key, value):
    with pytest.raises(ParamsError, match=rf"{section}\.{key}"):
        parse_params({section: {key: value}})


@pytest.mark.parametrize("value", [0, 2**32 - 1])
def test_every_seed_the_params_accept_runs_in_its_consumers(value):
    """The bounds are what the generators take: numpy's (negative refused), datasketch's RandomState
    (also 2**32 and above) and torch's."""
    import numpy as np
    import torch
    from datasketch import MinHash

    p = parse_params({s: {k: value} for s, k in SEEDS})
    np.random.default_rng([p.pretrain.seed, 1, 2, 3]).integers(10)
    MinHash(num_perm=8, seed=p.dedup.seed, scheme="affine32")
    torch.manual_seed(p.pretrain.seed)
    torch.Generator().manual_seed(p.sample.seed)
    with pytest.raises(ValueError):  # what the bounds guard against
        np.random.default_rng([-1338, 1])
    with pytest.raises(ValueError):
        MinHash(num_perm=8, seed=2**32, scheme="affine32")


@pytest.mark.parametrize("data, key", [
    ({"filter": {"quality": {"gopher_repetition": {"top_ngram_max_fraction": {0: 0.2}}}}},
     "filter.quality.gopher_repetition.top_ngram_max_fraction.0"),
    ({"scrape": {"sources": [{"kind": "local", "paths": ["x"], "encoding": "utf-9"}]}}, "scrape.sources.0.encoding"),
    ({"schedule": {"timezone": "Mars/Olympus"}}, "schedule.timezone"),
])
def test_values_their_consumers_refuse_are_refused(data, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        parse_params(data)
    assert parse_params({"schedule": {"timezone": "Europe/Paris"}}).schedule.timezone == "Europe/Paris"
