"""The `train` stage: fine-tune `cfg.model` on the synthesize stage's data.jsonl with the mode named by
`cfg.train.name` (conf/train/<name>.yaml -> training/<name>.py, one readable file per mode).

Writes into ctx.dir: `adapter/` (lora) or `model/` (full), `train_log.jsonl`, `train.json`."""

from __future__ import annotations

from treesynth.registry import Registry
from treesynth.stage_context import StageContext

MODES = Registry("training mode", "train=...", {"lora": "training.lora:run", "full": "training.full:run"})


def run(ctx: StageContext) -> dict:
    return MODES.load(str(ctx.cfg.train.name))(ctx)
