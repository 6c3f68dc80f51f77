"""`llmpipe <stage>`: validate params -> run the stage core -> write its metrics -> track in MLflow.

Exit status: 0 ok; 2 bad params or bad input (the message names the key or the file); 1 other failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path

from . import layout
from .config import ParamsError, load_params
from .io import InputError, write_json

log = logging.getLogger("llmpipe")

STAGES = ["scrape", "filter", "dedup", "tokenizer", "tokenize", "pretrain", "evaluate", "sample"]
# The params sections each stage reads (dvc.yaml lists the same).
SECTIONS = {"tokenizer": ["tokenizer", "split"], "tokenize": ["tokenize", "split"]}


def sections_of(stage: str) -> list[str]:
    return SECTIONS.get(stage, [stage])


def run_stage(stage: str, params_path: Path, root: Path) -> dict:
    from .tracking import start_stage_run

    params = load_params(params_path)
    module = importlib.import_module(f"llmpipe.stages.{stage}")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone writes metrics and tracks
        return module.run(params, root, sink=None).metrics
    section_params = {s: getattr(params, s).model_dump(mode="json") for s in sections_of(stage)}
    tracker = start_stage_run(root, params.tracking.experiment, stage, section_params)
    t0 = time.perf_counter()
    try:
        result = module.run(params, root, sink=tracker.log_metrics)
    except BaseException:
        tracker.end("FAILED")
        raise
    result.metrics.setdefault("seconds", round(time.perf_counter() - t0, 3))
    write_json(root / layout.metrics_file(stage), result.metrics)
    tracker.log_metrics(result.metrics, step=0)
    tracker.set_tags({f"metric.{k}": v for k, v in result.metrics.items() if isinstance(v, str)})
    for artifact in result.artifacts:
        tracker.log_artifact(artifact)
    if result.model_dir is not None:
        from .tracking import dvc_lineage_tags, git_commit

        # The model version links back to the data and code that made it, and names its own weights
        # (DVC's hash of the model folder) and what they depend on beyond params and data.
        own = {f"dvc.out.{layout.MODEL.as_posix()}": result.metrics.get("model_dvc_md5"),
               **{f"train.{k}": result.metrics.get(k) for k in ("precision", "device", "cpu", "cpu_bf16_units", "gpu")}}
        own = {k: str(v) for k, v in own.items() if v is not None}
        tracker.set_tags(own)
        lineage = {**dvc_lineage_tags(root, stage), "git.commit": git_commit(root) or "unknown", **own}
        version = tracker.log_model(result.model_dir, params.tracking.registered_model, lineage)
        if version:
            log.info("registered model %s version %s", params.tracking.registered_model, version)
    tracker.end("FINISHED")
    return result.metrics


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # trafilatura logs an ERROR for every page without main text; the scrape report counts those.
    for noisy in ("trafilatura", "htmldate", "courlan"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (outputs go under data/)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        sub.add_parser(stage, help=f"run the {stage} stage")
    sub.add_parser("validate", help="check params.yaml and exit")
    exp = sub.add_parser("export", help="export the trained model for other tools")
    exp.add_argument("out", type=Path, help="output folder")
    exp.add_argument("--format", choices=["hf"], default="hf", help="hf: a Hugging Face (Llama) model folder")
    lin = sub.add_parser("lineage", help="print the data versions behind a model or run")
    lin.add_argument("target", nargs="?", help="git revision, MLflow run id or models:/<name>/<version> "
                                               "(default: the workspace)")
    gen = sub.add_parser("generate", help="generate text from the trained model")
    gen.add_argument("prompts", nargs="+")
    gen.add_argument("--max-new-tokens", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile the per-token step (faster per token, about a minute to compile)")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    root = args.root.resolve()
    params_path = args.params if args.params.is_absolute() else root / args.params
    try:
        if args.command == "validate":
            load_params(params_path)
            print(f"{params_path}: ok")
        elif args.command == "export":
            from .export import export_hf
            from .weights import load_model

            out = export_hf(load_model(root / layout.MODEL), root / layout.TOKENIZER, args.out)
            print(f"wrote a Hugging Face model folder to {out}")
        elif args.command == "lineage":
            from .lineage import lineage

            print(lineage(root, args.target))
        elif args.command == "generate":
            from .stages.sample import generate_cli

            generate_cli(load_params(params_path), root, args)
        else:
            metrics = run_stage(args.command, params_path, root)
            log.info("%s done in %.1f s", args.command, metrics.get("seconds", 0.0))
    except (ParamsError, InputError) as err:
        print(f"llmpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: say which file, keep the rest
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        print(f"llmpipe {args.command}: failed: I/O error on{where or ' an output'}: {err.strerror or err} "
              f"(outputs written before are intact)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"llmpipe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence names the stage and the cause
        log.exception("llmpipe %s failed", args.command)
        print(f"llmpipe {args.command}: failed: {err.__class__.__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
