"""LoRA fine-tuning: the base model stays frozen; low-rank adapters on the configured modules train.
Output: `adapter/` (PEFT adapter + tokenizer), loadable with `PeftModel.from_pretrained` or lm-eval
`peft=<dir>` on top of the base model recorded in train.json."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from training.common import precision, save_output, train

OUTPUT = "adapter"


def lora_config(cfg: DictConfig):
    from peft import LoraConfig

    lc = cfg.train.lora
    targets = lc.target_modules
    # "all-linear" is PEFT's shorthand (every linear layer but the LM head); a list names modules.
    targets = OmegaConf.to_container(targets) if OmegaConf.is_list(targets) else str(targets)
    return LoraConfig(
        r=int(lc.r),
        lora_alpha=int(lc.alpha),
        lora_dropout=float(lc.dropout),
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def run(ctx) -> dict:
    # The frozen base can sit in half precision on GPU (half the memory); adapters stay fp32 (PEFT upcasts).
    prec = precision(str(ctx.cfg.train.runtime.precision))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec, torch.float32)
    trainer, metrics = train(ctx, "lora", peft_config=lora_config(ctx.cfg), model_dtype=dtype)
    save_output(trainer, Path(ctx.dir), OUTPUT)
    return metrics
