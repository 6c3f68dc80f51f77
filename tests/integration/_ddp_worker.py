"""Run by tests/integration/test_distributed.py under torchrun: train on a token dir, rank 0 writes the loss curve."""

import json
import sys
from pathlib import Path

from llmpipe.config.pretrain import PretrainParams
from llmpipe.model.weights import save_model
from llmpipe.training.loop import train
from llmpipe.training.parallel import is_main_process

token_dir, ckpt_dir, out, cfg_json = sys.argv[1:5]
stop_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
cfg = PretrainParams.model_validate_json(cfg_json)
res = train(cfg, Path(token_dir), Path(ckpt_dir), 64, {"id": "ddp"}, stop_after=stop_after)
if is_main_process():
    Path(out).write_text(json.dumps(res.history))
    save_model(res.model, Path(out).with_suffix(".model"))
