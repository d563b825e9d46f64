"""GPU check: our real stages on a CUDA device, offline, with a random-weight Llama built on the spot.

Meant for an air-gapped GPU node that has torch, transformers, peft and accelerate and nothing else but
the wheels of `make gpu-wheels` (bench/gpu_check.sh installs them, then runs this). No checkpoint and no
hub: a byte-level BPE tokenizer is trained on this repository's prompt texts and a small GSM8K-style
fixture written below, and a Llama-architecture model of the chosen shape gets random weights. Random
weights never stop early, so every generation runs to its token limit: the throughput figures are the
machinery's, the scores are meaningless (and not checked).

Paths it runs, each through the pipeline's own stage functions (`run_pipeline` on a config composed from
conf/ exactly as `python run.py <overrides>` would compose it):

  train_lora            train=lora, precision and gradient checkpointing `auto` (CUDA: bf16, or fp16 where
                        bf16 is only emulated, checkpointing on; CPU: fp32, off)
  eval                  evaluate_base + evaluate: lm-eval's hf backend on the device (base, base + adapter)
  train_full            train=full (fp32 weights, half-precision autocast on CUDA) + evaluate of the saved model
  cuda_settings_on_cpu  CPU runs only: the CUDA training settings and a bf16 lm-eval forced on the CPU
  launch                `torchrun -m training.launch` (one process per GPU; one process on CPU)
  synthesize            the embedded backend (llm=embedded, llm.runtime.device=<device>) writing a small
                        temperature-sampling dataset with xgrammar JSON masks
  vllm                  when vllm is installed: llm=vllm and eval=vllm through `python run.py` in a
                        subprocess (the engine wants GPU memory this process holds)

Every phase checks what it produced (steps, adapter/model files, n items scored, the precision the
trainer used, records written) and that the GPU was actually used; any failure, device-placement or
dtype error included, ends the run with exit status 1 and the phase's traceback. The last lines are a
table and one `GPU_CHECK_SUMMARY {json}` line (tests/test_gpu_check.py reads it).

    python bench/gpu_check.py                          # cuda when available, else cpu
    python bench/gpu_check.py --device cpu             # CI smoke of the script's own logic, tiny sizes
    python bench/gpu_check.py --device cuda --size 1b  # Llama-3.2-1B-shaped model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

from gpu_measure import Check, Phase, PlacementWarnings, peak_rss_mb  # noqa: E402
from gpu_model import SHAPES, build_model, write_fixture  # noqa: E402
from gpu_phases import (  # noqa: E402
    BUDGETS,
    Stages,
    bf16_native,
    phase_cuda_settings_on_cpu,
    phase_eval,
    phase_launch,
    phase_synthesize,
    phase_train_full,
    phase_train_lora,
    phase_vllm,
)

SUMMARY_TAG = "GPU_CHECK_SUMMARY"


# ---- setup --------------------------------------------------------------------------------------------


def choose_device(arg: str) -> str:
    """cpu hides every GPU from this process and its children before torch is imported (training picks
    CUDA whenever torch sees it); cuda fails at once when there is none."""
    if arg == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if arg == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but torch sees no CUDA device "
                 f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); check the driver or use --device cpu")
    return "cuda" if arg in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


OUT_MARKER = ".gpu_check_out"


def fresh_out(out: Path) -> None:
    """Empty the work folder, but only one this script made (or an empty one): --out is user input."""
    if out.exists() and any(out.iterdir()) and not (out / OUT_MARKER).exists():
        sys.exit(f"gpu_check: --out {out} is a non-empty folder this script did not make; choose another")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / OUT_MARKER).write_text("made by bench/gpu_check.py; emptied by its next run\n")


# ---- report --------------------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    env: dict[str, Any] = {"device": device, "python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "peft", "accelerate", "trl", "lm-eval", "datasets", "hydra-core", "vllm"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda=torch.version.cuda,
                   gpu_mem_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                   bf16_native=bf16_native())
    return env


def pinned_mismatches(env: dict[str, Any]) -> list[str]:
    """The preinstalled packages whose version differs from pyproject.toml's pin (a warning, not a failure)."""
    from gpu_wheels import PREINSTALLED, pyproject_pins

    pins = pyproject_pins()
    return [f"{p} {env[p]} (pinned {pins[p]})" for p in PREINSTALLED
            if env.get(p) and env[p].split("+")[0] != pins.get(p)]


def headline(phases: list[Phase]) -> dict[str, Any]:
    by = {p.name: p.metrics for p in phases if p.status == "ok"}
    def peak(key: str) -> float | None:
        values = [m[key] for m in by.values() if key in m]
        return max(values) if values else None

    return {
        "train_tokens_per_s_lora": by.get("train_lora", {}).get("train_tokens_per_s"),
        "train_tokens_per_s_full": by.get("train_full", {}).get("train_tokens_per_s"),
        "gen_samples_per_s": by.get("synthesize", {}).get("gen_samples_per_s"),
        "gen_tokens_per_s": by.get("synthesize", {}).get("gen_tokens_per_s"),
        "eval_items_per_s": by.get("eval", {}).get("eval_items_per_s"),
        "peak_gpu_mib": peak("peak_gpu_mib"),  # torch allocator, in-process phases
        "peak_gpu_device_mib": peak("peak_gpu_device_mib"),  # device-wide growth, subprocesses included
        "peak_rss_mib": peak_rss_mb(),
    }


def print_report(env: dict, model: dict, phases: list[Phase], warned: list[str], seconds: dict[str, float]) -> bool:
    ran = [p.name for p in phases if p.status == "ok"]
    ok = bool(ran) and all(p.status in ("ok", "skipped") for p in phases)
    print("\n== gpu_check ==")
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    print(f"model: random-weight Llama, shape {model['shape']} ({model['params'] / 1e6:.1f}M parameters, "
          f"vocab {model['vocab']})")
    for w in pinned_mismatches(env):
        print(f"WARNING: preinstalled {w}")
    print(f"{'phase':<21} {'status':<8} {'seconds':>8}  details")
    for p in phases:
        detail = p.note or ", ".join(f"{k}={v}" for k, v in p.metrics.items())
        print(f"{p.name:<21} {p.status:<8} {p.seconds:>8.1f}  {detail}")
    for w in warned:
        print(f"device/dtype warning seen: {w}")
    head = headline(phases)
    print("  ".join(f"{k}={v}" for k, v in head.items()))
    total = sum(seconds.values())
    print(f"RESULT: {'PASS' if ok else 'FAIL'}: {len(ran)} paths ran ({', '.join(ran)}) in {total:.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in seconds.items())})")
    summary = {"ok": ok, "ran": ran, "seconds": {k: round(v, 1) for k, v in seconds.items()}, "env": env,
               "model": model, "warnings": warned, **head,
               "phases": {p.name: {"status": p.status, "seconds": p.seconds, "note": p.note, **p.metrics} for p in phases}}
    print(f"{SUMMARY_TAG} {json.dumps(summary, sort_keys=True)}", flush=True)
    return ok


def vllm_wanted(setting: str, device: str) -> bool:
    if setting == "off":
        return False
    import importlib.util

    available = device == "cuda" and importlib.util.find_spec("vllm") is not None
    if setting == "on" and not available:
        sys.exit("gpu_check: --vllm on needs CUDA and an installed vllm")
    return available


PHASES = ("train_lora", "eval", "train_full", "cuda_settings_on_cpu", "launch", "synthesize", "vllm")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--size", choices=sorted(SHAPES), default=None, help="model shape (default: 135m on CUDA, tiny on CPU)")
    ap.add_argument("--out", type=Path, default=REPO / ".gpu_check", help="work folder (emptied first)")
    ap.add_argument("--skip", default="", help=f"comma-separated phases to skip: {','.join(PHASES)}")
    ap.add_argument("--vllm", choices=("auto", "on", "off"), default="auto",
                    help="auto: run the vllm phase when vllm is installed (CUDA only)")
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(PHASES):
        ap.error(f"--skip: unknown phase(s) {sorted(skip - set(PHASES))}; choose from {','.join(PHASES)}")
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)  # an air-gapped node: never wait on the hub

    t0 = time.perf_counter()
    seconds = {"install": float(os.environ.get("GPU_CHECK_INSTALL_S", 0))} if os.environ.get("GPU_CHECK_INSTALL_S") else {}
    device = choose_device(args.device)
    warned = PlacementWarnings()
    shape = args.size or ("135m" if device == "cuda" else "tiny")
    fresh_out(args.out)
    model_dir = args.out / "model"
    write_fixture(args.out / "data")
    model = build_model(model_dir, shape)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    st = Stages(device, args.out, model_dir, BUDGETS[device])
    check = Check(device)
    env = environment(device)
    seconds["setup"] = time.perf_counter() - t0

    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "train_lora": lambda: phase_train_lora(st),
        "eval": lambda: phase_eval(st, tok),
        "train_full": lambda: phase_train_full(st, tok),
        "cuda_settings_on_cpu": lambda: phase_cuda_settings_on_cpu(st, tok),
        "launch": lambda: phase_launch(st),
        "synthesize": lambda: phase_synthesize(st),
        "vllm": lambda: phase_vllm(st),
    }
    for name, fn in steps.items():
        if name in skip:
            check.skip(name, "--skip")
        elif name == "cuda_settings_on_cpu" and device == "cuda":
            check.skip(name, "CPU runs only (train_lora ran these settings on the GPU)")
        elif name == "vllm" and not vllm_wanted(args.vllm, device):
            check.skip(name, "vllm not installed or no CUDA (--vllm on to require it)")
        elif check.run(name, fn).status == "FAIL":
            break  # later phases reuse earlier artifacts; stop at the first failure
    seconds["phases"] = sum(p.seconds for p in check.phases)
    ok = print_report(env, model, check.phases, warned.seen, seconds)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
