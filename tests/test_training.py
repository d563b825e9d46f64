"""Training stage: real TRL + PEFT runs on the embedded SmolLM2 for a couple of steps, the completion-only
loss mask on a collated batch, config composition per model, and input errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl, write_jsonl
from treesynth.pipeline import stage_dir
from treesynth.stage_context import StageContext

# Handwritten GSM8K-style records in the data.jsonl contract.
QA = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7.\n#### 7"),
    ("A box holds 6 pens. How many pens are in 5 boxes?", "6 * 5 = 30.\n#### 30"),
    ("Sara read 12 pages on Monday and 9 on Tuesday. How many pages in total?", "12 + 9 = 21.\n#### 21"),
    ("A train travels 60 km per hour for 2 hours. How far does it go?", "60 * 2 = 120.\n#### 120"),
    ("There are 20 birds; 8 fly away. How many remain?", "20 - 8 = 12.\n#### 12"),
    ("A pizza has 8 slices shared by 4 friends equally. Slices each?", "8 / 4 = 2.\n#### 2"),
    ("Ben saves 5 dollars a week for 6 weeks. How much does he save?", "5 * 6 = 30.\n#### 30"),
    ("A shirt costs 15 dollars and a hat 7. What do both cost?", "15 + 7 = 22.\n#### 22"),
]
RECORDS = [
    {"id": f"r{i}", "task": "gsm8k", "method": "human", "prompt": q, "completion": a, "meta": {"seed": i}}
    for i, (q, a) in enumerate(QA)
]
TINY = ["train.max_steps=2", "train.per_device_batch_size=2", "train.grad_accum=1", "train.max_seq_len=128"]


def make_ctx(cfg, tmp_path: Path, records: list[dict] = RECORDS) -> StageContext:
    data_dir = tmp_path / "synth"
    write_jsonl(data_dir / "data.jsonl", records)
    out = stage_dir(cfg, "train")
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(cfg=cfg, stage="train", key=out.name, dir=out, inputs={"synthesize": data_dir})


class Recorder:
    def __init__(self):
        self.logged: list[dict] = []

    def log(self, data: dict) -> None:
        self.logged.append(data)


def test_model_defaults_flow_into_train_config(make_cfg):
    qwen = make_cfg("model=qwen2_5_7b")
    assert qwen.train.lr == 2e-4 and qwen.train.lora.r == 32 and qwen.train.max_seq_len == 2048
    assert qwen.model.path == "Qwen/Qwen2.5-7B-Instruct" and qwen.train.max_steps == -1 and qwen.train.grad_accum == 4
    small = make_cfg()  # the embedded default keeps `make run` short
    assert small.train.max_steps == 8 and small.train.grad_accum == 1 and small.train.lora.target_modules == "all-linear"
    llama = make_cfg("model=llama3_1_8b", "train=full")
    assert llama.train.lr == 1e-5 and "lora" not in llama.train
    # The command line wins over the model's default.
    assert make_cfg("model=llama3_1_8b", "train.lr=5e-5").train.lr == 5e-5
    # Throughput knobs leave the artifact key alone; result-changing ones move it.
    from treesynth.pipeline import stage_key

    base = stage_key(make_cfg(), "train")
    assert stage_key(make_cfg("train.runtime.logging_steps=7"), "train") == base
    assert stage_key(make_cfg("train.grad_accum=2"), "train") != base
    assert stage_key(make_cfg("model=qwen2_5_7b"), "train") != base


def test_precision_on_cpu():
    import torch

    from training.common import gradient_checkpointing, precision

    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert precision("auto") == "fp32" and gradient_checkpointing("auto") is False
    with pytest.raises(TreesynthError):
        precision("fp16")
    with pytest.raises(TreesynthError):
        precision("half")


def test_bad_records_are_one_line_errors(make_cfg, tmp_path):
    from training.common import load_records

    with pytest.raises(TreesynthError, match="run the synthesize stage"):
        load_records(tmp_path / "missing.jsonl")
    write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], {"id": "x", "prompt": "q", "completion": ""}])
    with pytest.raises(TreesynthError, match="record 2 .*'completion'"):
        load_records(tmp_path / "bad.jsonl")
    from training.stage import MODES, run

    assert sorted(MODES) == ["full", "lora"] and all(callable(MODES.load(m)) for m in MODES)
    with pytest.raises(TreesynthError, match=r"unknown training mode .qlora.; choose from full, lora \(train=\.\.\.\)"):
        run(make_ctx(make_cfg("train.name=qlora"), tmp_path))


@pytest.mark.slow
def test_loss_mask_covers_completion_only(make_cfg, tmp_path):
    from training.common import build_trainer
    from training.lora import lora_config

    cfg = make_cfg(*TINY)
    setup = build_trainer(make_ctx(cfg, tmp_path), peft_config=lora_config(cfg))
    tok = setup.trainer.processing_class
    batch = next(iter(setup.trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2
    by_prompt = {r["prompt"]: r for r in RECORDS}
    for ids, labels, attn in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        real = attn.bool()
        trained = labels != -100
        assert not (trained & ~real).any(), "padding must not be trained"
        # Trained tokens are one contiguous tail of the real tokens (the assistant turn)...
        first = int(trained.nonzero()[0])
        assert trained[first:].eq(real[first:]).all()
        assert (labels[trained] == ids[trained]).all()
        prompt_text = tok.decode(ids[real][:first])
        completion_text = tok.decode(ids[trained])
        # ...the prompt side is the chat-templated user turn ending in the generation prompt...
        rec = next(r for p, r in by_prompt.items() if p in prompt_text)
        assert prompt_text.rstrip().endswith("<|im_start|>assistant")
        assert rec["completion"] not in prompt_text
        # ...and the trained side is exactly the completion plus the end-of-turn token.
        assert completion_text.startswith(rec["completion"]) and "<|im_end|>" in completion_text
        assert "user" not in completion_text


@pytest.mark.slow
def test_lora_run_saves_loadable_adapter(make_cfg, tmp_path):
    from training.stage import run

    cfg = make_cfg(*TINY)
    ctx = make_ctx(cfg, tmp_path)
    ctx.tracker = Recorder()
    metrics = run(ctx)

    assert metrics["steps"] == 2 and metrics["examples"] == 8
    assert math.isfinite(metrics["final_loss"]) and metrics["final_loss"] > 0
    adapter = ctx.dir / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert (adapter / "tokenizer_config.json").exists()
    assert not (ctx.dir / "checkpoints").exists()
    log = read_jsonl(ctx.dir / "train_log.jsonl")
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert any("train/loss" in d for d in ctx.tracker.logged)
    info = json.loads((ctx.dir / "train.json").read_text())
    assert info["precision"] == "fp32" and info["settings"]["lora"]["r"] == 16 and info["steps"] == 2

    # The adapter loads onto the base model and changes its output (LoRA B starts at zero, so a
    # nonzero difference shows the saved weights actually trained).
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    pc = PeftConfig.from_pretrained(adapter)
    assert pc.r == 16
    base = AutoModelForCausalLM.from_pretrained(info["base_model_path"])
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, adapter)
        after = tuned(ids).logits
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


@pytest.mark.slow
def test_full_finetune_saves_model(make_cfg, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.stage import run

    cfg = make_cfg("train=full", "train.max_steps=1", "train.per_device_batch_size=2", "train.grad_accum=1",
                   "train.max_seq_len=64")
    ctx = make_ctx(cfg, tmp_path)
    metrics = run(ctx)
    assert metrics["steps"] == 1 and math.isfinite(metrics["final_loss"])
    assert metrics["trainable_params"] > 100_000_000  # every weight of the 135M model trains
    model_dir = ctx.dir / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.model_type == "llama" and tok.eos_token == "<|im_end|>"
    assert (ctx.dir / "train.json").exists() and read_jsonl(ctx.dir / "train_log.jsonl")
