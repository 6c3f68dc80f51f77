"""Small commands over params.yaml and the stage registry: validate, params, stages."""

from __future__ import annotations

from llmpipe.stages.params import load_params, params_yaml
from llmpipe.stages.registry import STAGES


def validate(args) -> None:
    load_params(args.params)
    print(f"{args.params}: ok")


def show_params(args) -> None:
    print(params_yaml(load_params(args.params)), end="")


def list_stages(args) -> None:
    for s in STAGES:
        inputs = ", ".join(f"{s.inp(n)}" for n in s.inputs) or "-"
        outputs = ", ".join(o.path for o in s.outputs.values()) or "-"
        print(f"{s.name:10} {s.help}\n{'':10} params: {', '.join(s.params)}; in: {inputs}; out: {outputs}")
