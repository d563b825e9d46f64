"""The GPU check's phases (bench/gpu_check.py): each runs our real stages through the pipeline on a
config composed from conf/ and checks what it produced."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_measure import CheckFailed, require
from gpu_model import TRAIN

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Budget:
    """How much work each phase does: tiny on CPU (CI), the real settings' scale on CUDA."""

    lora_steps: int
    full_steps: int
    launch_steps: int
    batch: int
    seq_len: int
    eval_items: int
    eval_tokens: int
    synth_records: int


BUDGETS = {
    "cpu": Budget(lora_steps=3, full_steps=2, launch_steps=2, batch=2, seq_len=128, eval_items=2, eval_tokens=16,
                  synth_records=4),
    "cuda": Budget(lora_steps=40, full_steps=5, launch_steps=10, batch=4, seq_len=512, eval_items=8,
                   eval_tokens=256, synth_records=32),
}


def bf16_native() -> bool:
    """Hardware bf16 (compute capability >= 8); torch's default check also says yes for emulated bf16."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def expected_precision(device: str) -> str:
    """What train.runtime.precision=auto must pick (training/common.py), derived independently here."""
    return "fp32" if device == "cpu" else "bf16" if bf16_native() else "fp16"


def eval_dtype(device: str) -> str:
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[expected_precision(device)]


class Stages:
    """Composes the repo's Hydra config with this check's overrides and runs pipeline stages."""

    def __init__(self, device: str, out: Path, model_dir: Path, budget: Budget):
        self.device, self.out, self.model_dir, self.b = device, out, model_dir, budget
        self.base = [
            f"paths.artifacts={out / 'artifacts'}", f"paths.results={out / 'results'}", "wandb.mode=disabled",
            "task=gsm8k", f"data.dir={out / 'data'}", f"model.path={model_dir}", "method=human",
            f"data.size={len(TRAIN)}", f"train.per_device_batch_size={budget.batch}", "train.grad_accum=1",
            f"train.max_seq_len={budget.seq_len}", "train.runtime.save_steps=1000",
            f"eval.limit={budget.eval_items}", f"eval.max_gen_toks={budget.eval_tokens}",
            f"eval.runtime.device={device}", f"eval.dtype={eval_dtype(device)}",
            f"eval.runtime.batch_size={budget.eval_items}",
        ]
        self.lora = ["train=lora", f"train.max_steps={budget.lora_steps}"]

    def compose(self, *overrides: str) -> Any:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            return compose("config", overrides=[*self.base, *overrides])

    def run(self, name: str, *overrides: str) -> dict:
        from treesynth.pipeline import run_pipeline

        return run_pipeline(self.compose(*overrides), self.out / "runs" / name)


def safetensors_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    dtypes = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes


def train_metrics(train_dir: Path, steps: int, output: str, precision: str, checkpointing: bool) -> dict[str, Any]:
    """Check a finished training artifact; tokens/s = TRL's running token count over the training loop."""
    from treesynth.io import read_jsonl

    info = json.loads((train_dir / "train.json").read_text())
    require(info["steps"] == steps, f"{train_dir.name}: {info['steps']} steps, expected {steps}")
    require(info["precision"] == precision, f"trained in {info['precision']}, expected {precision}")
    require(info["gradient_checkpointing"] == checkpointing,
            f"gradient checkpointing {info['gradient_checkpointing']}, expected {checkpointing}")
    marker = "adapter_config.json" if output == "adapter" else "config.json"
    require((train_dir / output / marker).is_file(), f"{train_dir / output} has no {marker}")
    # Trained weights stay fp32 under half-precision autocast (LoRA adapters over a half base; full: all).
    dtypes = safetensors_dtypes(train_dir / output)
    require(dtypes == {"F32"}, f"{output}/ weights saved as {sorted(dtypes)}, expected F32 only")
    rows = read_jsonl(train_dir / "train_log.jsonl")
    norms = [r["grad_norm"] for r in rows if "grad_norm" in r]
    require(bool(norms) and all(math.isfinite(n) for n in norms) and max(norms) > 0,
            f"gradient norms {norms}: no gradient reached the trained weights")
    tokens = max((r.get("num_tokens", 0) for r in rows), default=0)
    require(tokens > 0, "train_log.jsonl has no num_tokens (TRL's token count)")
    return {"steps": info["steps"], "precision": info["precision"], "checkpointing": info["gradient_checkpointing"],
            "world_size": info["world_size"], "train_tokens": int(tokens), "train_seconds": info["train_seconds"],
            "train_tokens_per_s": round(tokens / info["train_seconds"], 1), "final_loss": round(info["final_loss"], 4)}


def eval_metrics(eval_dir: Path, items: int, adapter: bool, dtype: str, tok: Any) -> dict[str, Any]:
    from treesynth.io import read_jsonl

    ev = json.loads((eval_dir / "eval.json").read_text())
    g = ev["benchmarks"]["gsm8k"]
    require(g["n"] == items, f"lm-eval scored {g['n']} items, expected {items}")
    require(bool(ev["adapter"]) == adapter, f"eval.json adapter={ev['adapter']!r}")
    require(g["settings"]["dtype"] == dtype, f"evaluated in {g['settings']['dtype']}, expected {dtype}")
    samples = read_jsonl(eval_dir / "samples_gsm8k.jsonl")
    require(len(samples) == items and all(s["response"] is not None for s in samples), "missing lm-eval samples")
    return {"n": g["n"], "generated_tokens": sum(len(tok(s["response"], add_special_tokens=False)["input_ids"])
                                                 for s in samples)}


def phase_train_lora(st: Stages) -> dict[str, Any]:
    summary = st.run("train_lora", *st.lora, "stages=[train]")
    return train_metrics(Path(summary["artifacts"]["train"]), st.b.lora_steps, "adapter",
                         expected_precision(st.device), st.device == "cuda")


def phase_eval(st: Stages, tok: Any) -> dict[str, Any]:
    summary = st.run("eval", *st.lora, "stages=[evaluate_base,evaluate]")
    dtype, n = eval_dtype(st.device), st.b.eval_items
    base = eval_metrics(Path(summary["artifacts"]["evaluate_base"]), n, False, dtype, tok)
    tuned = eval_metrics(Path(summary["artifacts"]["evaluate"]), n, True, dtype, tok)
    seconds = summary["stages"]["evaluate_base"]["seconds"] + summary["stages"]["evaluate"]["seconds"]
    return {"items": 2 * n, "dtype": dtype, "eval_seconds": round(seconds, 2),
            "eval_items_per_s": round(2 * n / seconds, 2),
            "eval_gen_tokens_per_s": round((base["generated_tokens"] + tuned["generated_tokens"]) / seconds, 1)}


def phase_train_full(st: Stages, tok: Any) -> dict[str, Any]:
    summary = st.run("train_full", "train=full", f"train.max_steps={st.b.full_steps}", "stages=[evaluate]")
    out = train_metrics(Path(summary["artifacts"]["train"]), st.b.full_steps, "model",
                        expected_precision(st.device), st.device == "cuda")
    ev = eval_metrics(Path(summary["artifacts"]["evaluate"]), st.b.eval_items, False, eval_dtype(st.device), tok)
    return {**out, "eval_n": ev["n"]}


def phase_cuda_settings_on_cpu(st: Stages, tok: Any) -> dict[str, Any]:
    """CPU runs only: what `auto` picks on CUDA (bf16 autocast over a bf16 frozen base, gradient
    checkpointing) and a bf16 lm-eval of the adapter, forced on the CPU, so CI covers the CUDA settings.
    seed=1: precision and checkpointing are runtime knobs, outside the artifact key."""
    summary = st.run("cuda_settings_on_cpu", *st.lora, "seed=1", "train.runtime.precision=bf16",
                     "train.runtime.gradient_checkpointing=true", "eval.dtype=bfloat16", "stages=[evaluate]")
    out = train_metrics(Path(summary["artifacts"]["train"]), st.b.lora_steps, "adapter", "bf16", True)
    ev = eval_metrics(Path(summary["artifacts"]["evaluate"]), st.b.eval_items, True, "bfloat16", tok)
    return {**out, "eval_n": ev["n"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise CheckFailed(f"{what} exited {proc.returncode}")


def phase_launch(st: Stages) -> dict[str, Any]:
    """The multi-GPU entry: torchrun with one process per visible GPU (one on CPU), a fresh train key."""
    import torch

    from treesynth.pipeline import stage_dir

    procs = torch.cuda.device_count() if st.device == "cuda" else 1
    overrides = ["train=lora", f"train.max_steps={st.b.launch_steps}"]
    subprocess_run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                    f"--master_port={free_port()}", "-m", "training.launch", *st.base, *overrides,
                    f"hydra.run.dir={st.out / 'runs' / 'launch'}"], "torchrun -m training.launch")
    out = train_metrics(stage_dir(st.compose(*overrides), "train"), st.b.launch_steps, "adapter",
                        expected_precision(st.device), st.device == "cuda")
    require(out["world_size"] == procs, f"world_size {out['world_size']}, expected {procs}")
    return {**out, "_subprocess": True}


def phase_synthesize(st: Stages) -> dict[str, Any]:
    summary = st.run("synthesize", "stages=[synthesize]", "method=temperature", "llm=embedded",
                     f"llm.model={st.model_dir}", f"llm.runtime.device={st.device}",
                     f"data.size={st.b.synth_records}", "llm.runtime.batch_size=16")
    m = summary["stages"]["synthesize"]
    require(m["records"] == st.b.synth_records, f"{m['records']} records, expected {st.b.synth_records}")
    llm = m["llm"]
    return {"records": m["records"], "llm_calls": llm["calls"], "completion_tokens": llm["completion_tokens"],
            "synth_seconds": m["seconds"], "gen_samples_per_s": round(m["records"] / m["seconds"], 2),
            "gen_tokens_per_s": round(llm["completion_tokens"] / m["seconds"], 1)}


def run_py(st: Stages, name: str, *overrides: str) -> dict:
    """`python run.py` in a subprocess: a vLLM engine wants GPU memory this process would hold on to."""
    subprocess_run([sys.executable, "run.py", *st.base, *overrides, f"hydra.run.dir={st.out / 'runs' / name}"],
                   f"run.py {' '.join(overrides)}")
    return json.loads((st.out / "runs" / name / "summary.json").read_text())


def phase_vllm(st: Stages) -> dict[str, Any]:
    """llm=vllm (generation) and eval=vllm (base and LoRA adapter), never run here: no vLLM on our machines."""
    synth = run_py(st, "vllm_synthesize", "stages=[synthesize]", "method=temperature", "llm=vllm",
                   f"llm.model={st.model_dir}", f"data.size={st.b.synth_records}", "seed=2",
                   "llm.runtime.tensor_parallel_size=1", "llm.runtime.gpu_memory_utilization=0.5",
                   "llm.runtime.max_model_len=2048")
    m = synth["stages"]["synthesize"]
    require(m["records"] == st.b.synth_records, f"vllm synthesize: {m['records']} records")
    ev = run_py(st, "vllm_eval", *st.lora, "eval=vllm", "stages=[evaluate_base,evaluate]")
    n = [ev["stages"][s]["benchmarks"]["gsm8k"]["n"] for s in ("evaluate_base", "evaluate")]
    require(n == [st.b.eval_items] * 2, f"vllm eval scored {n} items, expected {st.b.eval_items} each")
    return {"records": m["records"], "gen_samples_per_s": round(m["records"] / m["seconds"], 2),
            "eval_n": sum(n), "_subprocess": True}


