"""bench/recipe.py's named changes and bundles are valid pretrain settings on params.yaml's base, so a
round's command line cannot fail minutes in, after the data and the probes."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from llmpipe.config.pretrain import PretrainParams

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "recipe.py"


@pytest.fixture(scope="module")
def recipe():
    # bench/_root.py fixes the import path of a script run from bench/; under pytest the root is on it
    sys.modules.setdefault("_root", types.ModuleType("_root"))
    spec = importlib.util.spec_from_file_location("bench_recipe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", ["avx2", "bf16"])
def test_every_change_validates_on_the_params_base(recipe, shape):
    assert set(recipe.SHAPES) == {"avx2", "bf16"}  # a new shape joins the parameters above
    base = recipe.params_base(shape, 256, 8)
    bad = {}
    for name, change in recipe.CHANGES.items():
        cfg = recipe.merged(base, {k: v for k, v in change.items() if k != "vocab"})
        try:
            PretrainParams.model_validate(cfg)
        except ValueError as err:
            bad[name] = str(err)[:300]
    assert not bad, bad


def test_a_bundle_sets_what_its_members_set(recipe):
    """round4 is round4_opt plus the sequence-length warm-up; the two check the warm-up's share."""
    opt, full = recipe.CHANGES["round4_opt"], recipe.CHANGES["round4"]
    assert {k: full[k] for k in opt} == opt and full["seq_warmup_steps"] > 0
    assert {k: v for k, v in full.items() if k not in opt} == recipe.CHANGES["seq_warmup_316"]
