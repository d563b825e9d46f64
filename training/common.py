"""What every training mode shares: the dataset in TRL's conversational prompt-completion format, the
SFTConfig built from `cfg.train`, device-dependent precision, the loss log, and the trainer loop with
resume. A mode (lora.py, full.py) only says which weights train and what it saves.

Loss is on the completion only: TRL renders `prompt` alone (with the generation prompt) and
`prompt + completion` through the base model's chat template and masks the common prefix with -100.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from treesynth.errors import TreesynthError
from treesynth.io import JsonlAppender, atomic_write_json, iter_jsonl, write_jsonl
from treesynth.models import resolve_model_path
from treesynth.progress import Progress
from treesynth.progress import configure as configure_progress
from treesynth.settings import Train as TrainSettings
from treesynth.settings import load

log = logging.getLogger("treesynth")

DATA_FILE = "data.jsonl"
LOG_FILE = "train_log.jsonl"
INFO_FILE = "train.json"
CHECKPOINTS = "checkpoints"


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Synthesized records from data.jsonl; each needs a non-empty string `prompt` and `completion`."""
    path = Path(path)
    if not path.is_file():
        raise TreesynthError(f"training data not found: {path} (run the synthesize stage first)")
    rows = list(iter_jsonl(path))
    for i, r in enumerate(rows, 1):
        for k in ("prompt", "completion"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise TreesynthError(f"{path} record {i} (id={r.get('id')!r}) has no non-empty string {k!r}")
    if not rows:
        raise TreesynthError(f"{path} has no records to train on")
    return rows


def to_conversational(rows: list[dict[str, Any]]):
    """HF Dataset with prompt=[user turn], completion=[assistant turn], so the chat template is used."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in rows
        ]
    )


def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:  # Llama 3.x ships none; labels come from the dataset, so eos as pad is safe
        tok.pad_token = tok.eos_token
    return tok


def precision(setting: str) -> str:
    """bf16 | fp16 | fp32, decided from the device when `auto` (bf16 on CPU is ~20x slower)."""
    setting = str(setting)
    cuda = torch.cuda.is_available()
    if setting == "auto":
        if not cuda:
            return "fp32"
        # Hardware bf16 only (compute capability >= 8): by default torch also says yes for the slow
        # emulated bf16 of V100/T4, where fp16 is the fast half precision.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if setting not in ("bf16", "fp16", "fp32"):
        raise TreesynthError(f"train.runtime.precision={setting!r}: choose auto, bf16, fp16 or fp32")
    if setting == "fp16" and not cuda:
        raise TreesynthError("train.runtime.precision=fp16 needs a CUDA GPU; use auto or fp32 on CPU")
    return setting


def gradient_checkpointing(setting: Any) -> bool:
    # Saves GPU memory at ~30% more compute; on CPU memory is plentiful and it only slows steps down.
    if str(setting) == "auto":
        return torch.cuda.is_available()
    return bool(setting)


def sft_config(train: DictConfig, out_dir: Path, seed: int, prec: str, model_dtype: torch.dtype | None):
    """TRL SFTConfig from `cfg.train`. report_to=none: W&B goes through ctx.tracker, one run per experiment."""
    from trl import SFTConfig

    t = load(train, TrainSettings, "train")  # bad types and ranges are one line naming the key
    if t.max_steps <= 0 and t.epochs <= 0:
        raise TreesynthError("set train.epochs > 0 or train.max_steps > 0")
    gc = gradient_checkpointing(t.runtime.gradient_checkpointing)
    return SFTConfig(
        output_dir=str(out_dir / CHECKPOINTS),
        seed=int(seed),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_length=t.max_seq_len,
        packing=t.packing,
        completion_only_loss=True,
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        activation_checkpointing=gc,  # transformers 5 name; overrides TRL's gradient_checkpointing=True default
        activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        model_init_kwargs={"dtype": model_dtype} if model_dtype is not None else None,
        logging_steps=t.runtime.logging_steps,
        dataloader_num_workers=t.runtime.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient; the search costs a pass  # lets several CPU processes train as one (gloo DDP)
        save_strategy="steps",
        save_steps=t.runtime.save_steps,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
    )


class LossLog(TrainerCallback):
    """Writes every trainer log (loss, lr, grad norm) to train_log.jsonl and forwards it to W&B."""

    def __init__(self, path: Path, tracker: Any = None, resume_step: int = 0):
        self.path, self.tracker = path, tracker
        # Rows past the checkpoint we resume from will be logged again: drop them first.
        if path.exists():
            write_jsonl(path, [r for r in iter_jsonl(path) if r.get("step", 0) <= resume_step])
        self.rows: list[dict[str, Any]] = list(iter_jsonl(path)) if path.exists() else []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        self.rows.append(row)
        with JsonlAppender(self.path) as f:
            f.append(row)
        if self.tracker is not None:
            self.tracker.log({f"train/{k}": v for k, v in logs.items() if isinstance(v, int | float)})


class TrainProgress(TrainerCallback):
    """Steps done / total and the last loss as a live bar or a log line every progress.every_s seconds
    (treesynth/progress.py); the totals stay in train.json."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = Progress("train", int(state.max_steps) or None, "steps",
                                     extra=lambda: {"loss": "-" if self.loss is None else f"{self.loss:.4f}"})
            self.progress.set(int(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.set(int(state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and isinstance(logs.get("loss"), int | float):
            self.loss = float(logs["loss"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()
            log.info("%s", self.progress.line())
            self.progress = None


@dataclass
class Setup:
    """A ready SFTTrainer and what the run report needs about it."""

    trainer: Any
    loss_log: LossLog
    resume_from: str | None  # checkpoint of an interrupted run, or None
    examples: int
    model_path: str
    precision: str


def build_trainer(ctx, peft_config: Any = None, model_dtype: torch.dtype | None = None) -> Setup:
    """SFTTrainer on the synthesized data in ctx.inputs["synthesize"], checkpointing under ctx.dir."""
    from trl import SFTTrainer

    cfg, out = ctx.cfg, Path(ctx.dir)
    rows = load_records(Path(ctx.inputs["synthesize"]) / DATA_FILE)
    model_path = resolve_model_path(str(cfg.model.path))
    prec = precision(str(cfg.train.runtime.precision))
    args = sft_config(cfg.train, out, int(cfg.seed), prec, model_dtype)

    last = get_last_checkpoint(str(out / CHECKPOINTS)) if (out / CHECKPOINTS).is_dir() else None
    resume_step = int(last.rsplit("-", 1)[1]) if last else 0
    loss_log = LossLog(out / LOG_FILE, ctx.tracker, resume_step)
    configure_progress(cfg)
    trainer = SFTTrainer(
        model=model_path,
        args=args,
        train_dataset=to_conversational(rows),
        processing_class=load_tokenizer(model_path),
        peft_config=peft_config,
        callbacks=[loss_log, TrainProgress()],
    )
    return Setup(trainer, loss_log, last, len(rows), model_path, prec)


def sequence_lengths(dataset: Any, args: Any) -> dict[str, int]:
    """Token lengths of the training sequences, and how many reached `train.max_seq_len` (TRL truncates
    at it: such a record lost the end of its completion). Unpacked data only."""
    if args.packing or "input_ids" not in dataset.column_names:
        return {}
    lengths = [len(ids) for ids in dataset["input_ids"]]
    truncated = sum(n >= args.max_length for n in lengths)
    if truncated:
        log.warning("[train] %d of %d records reach train.max_seq_len=%d tokens and were cut; raise train.max_seq_len",
                    truncated, len(lengths), args.max_length)
    return {"max_sequence_tokens": max(lengths, default=0), "truncated_records": truncated}


def train(ctx, mode: str, peft_config: Any = None, model_dtype: torch.dtype | None = None) -> tuple[Any, dict]:
    """Run SFT on the synthesized data; return (trainer, metrics). The caller saves what its mode produces."""
    cfg, out = ctx.cfg, Path(ctx.dir)
    setup = build_trainer(ctx, peft_config, model_dtype)
    trainer, args = setup.trainer, setup.trainer.args
    lengths = sequence_lengths(trainer.train_dataset, args)
    if setup.resume_from:
        log.info("[train] resuming from %s", setup.resume_from)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=setup.resume_from)
    seconds = round(time.time() - t0, 2)

    losses = [r["loss"] for r in setup.loss_log.rows if "loss" in r]
    final_loss = losses[-1] if losses else float(result.training_loss)
    if not math.isfinite(final_loss):
        raise TreesynthError(f"training diverged (loss {final_loss}); lower train.lr or check the data")
    metrics = {
        "mode": mode,
        "final_loss": final_loss,
        "first_loss": losses[0] if losses else final_loss,
        "mean_loss": float(result.training_loss),
        "steps": int(trainer.state.global_step),
        "examples": setup.examples,
        "train_sequences": len(trainer.train_dataset),
        **lengths,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "train_seconds": seconds,
    }
    info = {
        **metrics,
        "base_model": str(cfg.model.path),
        "base_model_path": setup.model_path,
        "precision": setup.precision,
        "gradient_checkpointing": args.activation_checkpointing,
        "world_size": args.world_size,
        "settings": OmegaConf.to_container(cfg.train, resolve=True),
    }
    if trainer.is_world_process_zero():
        atomic_write_json(out / INFO_FILE, info)
    return trainer, metrics


def save_output(trainer: Any, out_dir: Path, name: str) -> Path:
    """Save weights (adapter or model) plus tokenizer into out_dir/name, atomically: a half-written
    directory is never seen under the final name. Then drop the resume checkpoints."""
    target, tmp = out_dir / name, out_dir / f".{name}.tmp"
    trainer.save_model(str(tmp))  # every rank calls it: FSDP/DeepSpeed gather the weights collectively
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(tmp))  # evaluation loads both from one directory
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        shutil.rmtree(Path(trainer.args.output_dir), ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return target
