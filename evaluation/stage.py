"""Pipeline stages `evaluate_base` and `evaluate`: score a model on the task's benchmarks, write eval.json."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evaluation.harness import run_eval
from treesynth.benchmarks import benchmark
from treesynth.datasets import benchmark_digests, local_data_digest
from treesynth.errors import TreesynthError
from treesynth.io import atomic_write_json
from treesynth.models import resolve_model_path
from treesynth.progress import configure as configure_progress
from treesynth.stage_context import StageContext

EVAL_FILE = "eval.json"


def _benchmarks(cfg: DictConfig) -> list[str]:
    return list(OmegaConf.select(cfg, "task.benchmarks", default=[]) or [])


def key_inputs(cfg: DictConfig) -> dict:
    """Part of the artifact key: the benchmarks' local files by content (None: from the hub) and each
    benchmark's registry entry (a user benchmark: its YAML and its own test file by content)."""
    data_dir = cfg.data.dir
    return {"data": local_data_digest(_benchmarks(cfg), data_dir),
            "benchmarks": benchmark_digests(_benchmarks(cfg), data_dir),
            "answer_format": _answer_format(cfg)}


def _answer_format(cfg: DictConfig) -> str | None:
    """The task's answer format when a user benchmark without its own extractor reads answers with it."""
    fmt = OmegaConf.select(cfg, "task.answer.format", default=None)
    if any(b.kind == "user" and not b.extract for b in map(benchmark, _benchmarks(cfg))):
        return fmt
    return None


def _evaluate(ctx: StageContext, model_path: str, adapter: str | None) -> dict:
    cfg = ctx.cfg
    configure_progress(cfg)
    data_dir = cfg.data.dir
    result = run_eval(cfg.eval, _benchmarks(cfg), model_path, adapter, data_dir, ctx.dir,
                      answer_format=OmegaConf.select(cfg, "task.answer.format", default=None), stage=ctx.stage)
    atomic_write_json(ctx.dir / EVAL_FILE, result)
    return result


def run_base(ctx: StageContext) -> dict:
    """The base model as configured (`model.path`; `embedded` = the converted SmolLM2)."""
    return _evaluate(ctx, resolve_model_path(ctx.cfg.model.path), None)


def finetuned_model(train_dir: Path, base_path: str) -> tuple[str, str | None]:
    """(model path, adapter path) from a training artifact: `adapter/` (LoRA) or `model/` (full)."""
    if (train_dir / "adapter" / "adapter_config.json").exists():
        return base_path, str(train_dir / "adapter")
    if (train_dir / "model" / "config.json").exists():
        return str(train_dir / "model"), None
    raise TreesynthError(f"{train_dir} has neither adapter/ nor model/: run the train stage first")


def run_finetuned(ctx: StageContext) -> dict:
    model_path, adapter = finetuned_model(Path(ctx.inputs["train"]), resolve_model_path(ctx.cfg.model.path))
    return _evaluate(ctx, model_path, adapter)
