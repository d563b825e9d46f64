"""bench/gpu_check.sh: the CPU smoke of the whole check (slow), and its failure logic, the wheel-folder
guard and the precision choice it expects on GPUs (fast)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def load(name: str):
    sys.path.insert(0, str(REPO / "bench"))  # gpu_check imports gpu_wheels as its sibling, as when run
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_cpu_smoke_runs_every_path_and_prints_the_figures(tmp_path):
    proc = run_script("--device", "cpu", "--out", str(tmp_path / "check"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    line = next(x for x in out.splitlines() if x.startswith("GPU_CHECK_SUMMARY "))
    s = json.loads(line.removeprefix("GPU_CHECK_SUMMARY "))
    assert s["ok"] is True and "RESULT: PASS" in out
    assert s["ran"] == ["train_lora", "eval", "train_full", "cuda_settings_on_cpu", "launch", "synthesize"]
    ph = s["phases"]
    assert ph["vllm"]["status"] == "skipped"
    # CPU defaults (fp32, no checkpointing) and the CUDA settings forced on the CPU (bf16, checkpointing).
    assert (ph["train_lora"]["precision"], ph["train_lora"]["checkpointing"]) == ("fp32", False)
    assert (ph["cuda_settings_on_cpu"]["precision"], ph["cuda_settings_on_cpu"]["checkpointing"]) == ("bf16", True)
    assert ph["train_lora"]["steps"] == 3 and ph["train_full"]["steps"] == 2 and ph["launch"]["world_size"] == 1
    assert ph["eval"]["items"] == 4 and ph["eval"]["dtype"] == "float32" and ph["synthesize"]["records"] == 4
    # The figures the GPU run reports; peak GPU memory is null without a GPU.
    for key in ("train_tokens_per_s_lora", "train_tokens_per_s_full", "gen_samples_per_s", "gen_tokens_per_s",
                "eval_items_per_s", "peak_rss_mib"):
        assert s[key] > 0, key
    assert s["peak_gpu_mib"] is None and s["peak_gpu_device_mib"] is None and s["env"]["device"] == "cpu"
    for name in s["ran"]:
        assert any(row.split()[:2] == [name, "ok"] for row in out.splitlines()), name
    # Everything was written under --out: the model, the fixture, the artifacts.
    assert (tmp_path / "check" / "model" / "tokenizer_config.json").is_file()
    assert (tmp_path / "check" / "data" / "gsm8k" / "test.jsonl").is_file()


def test_a_failing_phase_fails_the_run(tmp_path, capsys):
    gc = load("gpu_check")
    check = gc.Check("cpu")

    def broken() -> dict:
        raise RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu")

    assert check.run("train_lora", broken).status == "FAIL"
    check.skip("vllm", "not installed")
    env = {"device": "cpu", "torch": None}
    assert gc.print_report(env, {"shape": "tiny", "params": 1, "vocab": 1}, check.phases, [], {"phases": 1.0}) is False
    out = capsys.readouterr().out
    assert "RESULT: FAIL" in out and "same device" in out


def test_train_artifact_checks_catch_wrong_precision_and_dead_gradients(tmp_path):
    gp = load("gpu_phases")
    import torch
    from safetensors.torch import save_file

    from treesynth.io import write_jsonl

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(2, dtype=torch.float32)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    info = {"steps": 2, "precision": "fp32", "gradient_checkpointing": False, "world_size": 1, "train_seconds": 1.0,
            "final_loss": 1.0}
    (tmp_path / "train.json").write_text(json.dumps(info))
    write_jsonl(tmp_path / "train_log.jsonl", [{"step": 1, "grad_norm": 0.5, "num_tokens": 10},
                                               {"step": 2, "grad_norm": 0.4, "num_tokens": 20}])
    assert gp.train_metrics(tmp_path, 2, "adapter", "fp32", False)["train_tokens_per_s"] == 20.0
    with pytest.raises(gp.CheckFailed, match="trained in fp32, expected bf16"):
        gp.train_metrics(tmp_path, 2, "adapter", "bf16", False)
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    with pytest.raises(gp.CheckFailed, match="saved as \\['BF16'\\]"):
        gp.train_metrics(tmp_path, 2, "adapter", "fp32", False)
    save_file({"w": torch.zeros(2, dtype=torch.float32)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    write_jsonl(tmp_path / "train_log.jsonl", [{"step": 1, "grad_norm": 0.0, "num_tokens": 10}])
    with pytest.raises(gp.CheckFailed, match="no gradient"):
        gp.train_metrics(tmp_path, 2, "adapter", "fp32", False)


def test_wheels_for_another_python_are_refused_before_any_install(tmp_path):
    (tmp_path / "requirements.txt").write_text("# python 2.7 manylinux_2_28_x86_64: bench/gpu_wheels.py\ntrl==1.16.0\n")
    proc = run_script("--wheels", str(tmp_path), "--device", "cpu", timeout=60)
    assert proc.returncode == 2 and "wheels for Python 2.7" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_script("--wheels", str(tmp_path / "missing"), timeout=60)
    assert proc.returncode == 2 and "make gpu-wheels" in proc.stderr


def test_wheel_list_is_pinned_in_pyproject_and_platforms_expand():
    gw = load("gpu_wheels")
    pins = gw.pyproject_pins()
    assert pins["trl"] == "1.16.0" and pins["aiohttp"] == "3.14.5"
    assert gw.pinned(gw.ROOTS + gw.PREINSTALLED, pins)[0] == f"hydra-core=={pins['hydra-core']}"
    tags = gw.platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags and gw.platforms("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_auto_precision_prefers_fp16_on_gpus_with_emulated_bf16(monkeypatch):
    """V100/T4: torch.cuda.is_bf16_supported() says yes (emulation); only real bf16 hardware gets bf16."""
    import torch

    from training.common import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert precision("auto") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision("auto") == "bf16"


def test_out_folder_is_emptied_only_when_the_script_made_it(tmp_path):
    gc = load("gpu_check")
    mine = tmp_path / "mine"
    gc.fresh_out(mine)
    (mine / "old.txt").write_text("x")
    gc.fresh_out(mine)
    assert sorted(p.name for p in mine.iterdir()) == [gc.OUT_MARKER]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="did not make"):
        gc.fresh_out(theirs)
    assert (theirs / "notes.txt").read_text() == "keep"
