"""Run by tests/integration/test_distributed.py under torchrun: train on a token dir, rank 0 writes the loss curve."""

import itertools
import json
import os
import sys
from pathlib import Path

from llmpipe.config.pretrain import PretrainParams
from llmpipe.model.weights import save_model
from llmpipe.training.loop import train
from llmpipe.training.pace import Pace
from llmpipe.training.parallel import is_main_process

token_dir, ckpt_dir, out, cfg_json = sys.argv[1:5]
stop_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
cfg = PretrainParams.model_validate_json(cfg_json)
pace = None
if os.environ.get("PACE_SECONDS"):  # a clock that ticks at a different speed on each rank
    ticks, rate = itertools.count(), float(os.environ["PACE_TICK"].split(",")[int(os.environ.get("RANK", "0"))])
    pace = Pace(float(os.environ["PACE_SECONDS"]), clock=lambda: next(ticks) * rate)
res = train(cfg, Path(token_dir), Path(ckpt_dir), 64, {"id": "ddp"}, stop_after=stop_after, pace=pace)
if is_main_process():
    Path(out).write_text(json.dumps(res.history))
    save_model(res.model, Path(out).with_suffix(".model"))
