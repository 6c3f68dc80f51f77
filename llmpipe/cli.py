"""`llmpipe <command>`: the pipeline's stages (from the stage registry) and the tools around them.

Exit status: 0 ok; 2 bad params or bad input (the message names the key or the file); 1 other failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from llmpipe.config.base import ParamsError
from llmpipe.stages.registry import STAGES, StageFailed
from llmpipe.util.io import InputError

log = logging.getLogger("llmpipe")

# The tools besides the stages: command -> (help, "module:function"). A handler's module is imported
# only when its command runs, so a stage's process imports the stage's code alone and its DVC code
# deps stay tight. tests/unit/test_structure.py keeps this table, the parser and the README in sync.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("check the whole of params.yaml and exit", "llmpipe.ops.commands:validate"),
    "params": ("print the validated params with every default, as YAML", "llmpipe.ops.commands:show_params"),
    "stages": ("list the stages of the registry", "llmpipe.ops.commands:list_stages"),
    "dvc-yaml": ("write dvc.yaml from the stage registry (--check: fail if it differs)",
                 "llmpipe.ops.dvcgen:command"),
    "generate": ("generate text from the trained model", "llmpipe.ops.generate:command"),
    "export": ("export the trained model for other tools", "llmpipe.ops.export:command"),
    "lineage": ("print the data versions behind a model or run (--step N: the documents of a training step)",
                "llmpipe.ops.lineage:command"),
    "serve": ("serve the trained model over an OpenAI-compatible HTTP API, with a web chat",
              "llmpipe.ops.serve:command"),
    "seen": ("does a text occur in the training documents, and in which (13-gram index)",
             "llmpipe.ops.seen:command"),
    "chat": ("chat with the finetuned model in the terminal", "llmpipe.ops.chat:command"),
    "trace": ("the spans of a text found verbatim in the training documents (suffix array)",
              "llmpipe.ops.trace:command"),
    "card": ("a self-contained HTML model card: data funnel, curves, benchmarks, samples, lineage",
             "llmpipe.ops.card:command"),
}
# `export --format F` -> (help, "module:function"); "export" in COMMANDS is the default format's handler.
EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "hf": ("a Hugging Face (Llama) model folder", "llmpipe.ops.export:command"),
    "gguf": ("one GGUF file for llama.cpp", "llmpipe.ops.gguf:command"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (outputs go under data/)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for spec in STAGES:
        sub.add_parser(spec.name, help=f"stage: {spec.help}")
    tools = {name: sub.add_parser(name, help=help_) for name, (help_, _) in COMMANDS.items()}
    tools["dvc-yaml"].add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs")
    tools["export"].add_argument("out", type=Path, help="output folder (gguf: a .gguf file, or a folder "
                                 "receiving model.gguf)")
    tools["export"].add_argument("--format", choices=list(EXPORT_FORMATS), default="hf",
                                 help="; ".join(f"{k}: {h}" for k, (h, _) in EXPORT_FORMATS.items()))
    tools["export"].add_argument("--dtype", choices=["f32", "f16"], default="f32",
                                 help="weights' precision (gguf only; hf is f32)")
    tools["export"].add_argument("--model", default=None,
                                 help="chat (the newest chat model), base (the pretrained one), a model folder, or "
                                      "models:/NAME/VERSION (a registered MLflow version); default: chat if it "
                                      "exists, else base")
    tools["export"].add_argument("--registered", default=None, metavar="NAME/VERSION",
                                 help="export a registered MLflow model version (same as --model models:/NAME/VERSION)")
    tools["lineage"].add_argument("target", nargs="?", help="git revision, MLflow run id or "
                                  "models:/<name>/<version> (default: the workspace)")
    tools["lineage"].add_argument("--step", type=int, default=None, help="instead: the documents behind "
                                  "every row of pretraining step N (numbered as in the training logs, from 1)")
    tools["lineage"].add_argument("--json", action="store_true", help="with --step: print the rows as JSON")
    tools["lineage"].add_argument("--model-dir", type=Path, default=None, help="with --step: the model whose "
                                  "run to read (default: the pretrain output, else its latest checkpoint)")
    tools["seen"].add_argument("text", help="the text to look for")
    tools["trace"].add_argument("text", help="the text to trace (- reads standard input)")
    tools["trace"].add_argument("--min-tokens", type=int, default=None, help="shortest span (default: trace.min_tokens)")
    tools["trace"].add_argument("--json", action="store_true", help="print the spans and documents as JSON")
    tools["card"].add_argument("model", nargs="?", help="models:/<name>/<version>, an MLflow run id or a git "
                               "revision (default: the workspace's model)")
    tools["card"].add_argument("--out", type=Path, default=None, help="the HTML file (default data/card.html)")
    tools["seen"].add_argument("--limit", type=int, default=20, help="documents to list (default 20)")
    gen = tools["generate"]
    gen.add_argument("prompts", nargs="+")
    gen.add_argument("--max-new-tokens", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile the per-token step (faster per token, about a minute to compile)")
    srv = tools["serve"]
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--model-dir", type=Path, default=None,
                     help="serve this model folder alone (default: the newest chat model as <name> and the base "
                          "model as <name>-base; the base model alone before finetuning)")
    srv.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: the tokenizer output)")
    srv.add_argument("--model-name", default="llmpipe", help="the default model's id (default llmpipe)")
    srv.add_argument("--api-key", default=None,
                     help="require `Authorization: Bearer KEY` on /v1 (default: the environment's LLMPIPE_API_KEY)")
    srv.add_argument("--insecure", action="store_true",
                     help="allow a non-loopback --host without an API key (anyone reaching the port may use it)")
    srv.add_argument("--max-queue", type=int, default=16,
                     help="requests that may wait for the generator; beyond them: 429 (default 16)")
    srv.add_argument("--max-tokens-limit", type=int, default=1024,
                     help="the largest max_tokens a request may ask for; beyond it: 400 (default 1024)")
    srv.add_argument("--max-body-bytes", type=int, default=1_000_000,
                     help="the largest request body; beyond it: 413 (default 1 MB)")
    srv.add_argument("--threads", type=int, default=None,
                     help="torch threads for generation (default: half the cores, leaving the rest to HTTP)")
    srv.add_argument("--compile", action="store_true",
                     help="torch.compile the per-token step (faster per token, about a minute to compile)")
    chat = tools["chat"]
    chat.add_argument("--model-dir", type=Path, default=None,
                      help="model folder (default: the newest chat model, else the pretrain output)")
    chat.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: the tokenizer output)")
    chat.add_argument("--system", default=None, help="a system prompt, kept when old turns are dropped")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--top-k", type=int, default=50)
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # trafilatura logs an ERROR for every page without main text; the scrape report counts those.
    for noisy in ("trafilatura", "htmldate", "courlan"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def handler(command: str, export_format: str | None = None):
    target = EXPORT_FORMATS[export_format][1] if command == "export" and export_format else COMMANDS[command][1]
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    args.root = args.root.resolve()
    args.params = args.params if args.params.is_absolute() else args.root / args.params
    try:
        if args.command in COMMANDS:
            handler(args.command, getattr(args, "format", None))(args)
        else:
            from llmpipe.ops.shell import run_stage

            metrics = run_stage(args.command, args.params, args.root)
            log.info("%s done in %.1f s", args.command, metrics.get("seconds", 0.0))
    except (ParamsError, InputError) as err:
        print(f"llmpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except StageFailed as err:  # it stopped early and kept what it could; the message says what
        print(f"llmpipe {args.command}: failed: {err}", file=sys.stderr)
        return 1
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
