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
import gc
import json
import logging
import math
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without install

SUMMARY_TAG = "GPU_CHECK_SUMMARY"

# Llama shapes (hidden, intermediate, layers, heads, kv heads). The vocabulary is the trained tokenizer's.
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 128, 2, 4, 2),  # CPU smoke: seconds
    "135m": (576, 1536, 30, 9, 3),  # SmolLM2-135M's layers and widths (~107M parameters with this vocabulary)
    "1b": (2048, 8192, 16, 32, 8),  # Llama-3.2-1B's shape
}


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

# A GSM8K-style fixture, written for this check (never the benchmark's own items): the `human` method
# trains on TRAIN and lm-eval scores TEST, both read from a local data dir as on an offline node.
TRAIN = [
    ("Mia has 4 red pens and 7 blue pens. She gives away 3 pens. How many pens does she have left?",
     "Mia has 4 + 7 = <<4+7=11>>11 pens.\nAfter giving 3 away she has 11 - 3 = <<11-3=8>>8 pens.\n#### 8"),
    ("A bus carries 32 people. At the first stop 9 get off and 5 get on. How many people are on the bus now?",
     "After 9 get off there are 32 - 9 = <<32-9=23>>23.\nThen 5 get on: 23 + 5 = <<23+5=28>>28.\n#### 28"),
    ("Leo bakes 3 trays of cookies with 12 cookies each and eats 4. How many cookies remain?",
     "He bakes 3 * 12 = <<3*12=36>>36 cookies.\n36 - 4 = <<36-4=32>>32 remain.\n#### 32"),
    ("A rope is 45 meters long. It is cut into 5 equal pieces. How long is each piece?",
     "Each piece is 45 / 5 = <<45/5=9>>9 meters.\n#### 9"),
    ("Nora earns 15 dollars an hour and works 6 hours on Saturday. How much does she earn?",
     "She earns 15 * 6 = <<15*6=90>>90 dollars.\n#### 90"),
    ("A garden has 8 rows of tulips with 14 tulips in each row. How many tulips are there?",
     "There are 8 * 14 = <<8*14=112>>112 tulips.\n#### 112"),
    ("Sam had 120 stickers and put them equally into 8 albums. How many stickers went into each album?",
     "Each album got 120 / 8 = <<120/8=15>>15 stickers.\n#### 15"),
    ("A shop sold 23 kites on Monday and twice as many on Tuesday. How many kites did it sell in both days?",
     "On Tuesday it sold 2 * 23 = <<2*23=46>>46.\nIn total 23 + 46 = <<23+46=69>>69 kites.\n#### 69"),
    ("Ivy runs 3 km every morning for 2 weeks. How many kilometers does she run?",
     "Two weeks have 2 * 7 = <<2*7=14>>14 days.\nShe runs 14 * 3 = <<14*3=42>>42 km.\n#### 42"),
    ("A box of 24 apples costs 6 dollars. What does one apple cost in cents?",
     "One apple costs 6 / 24 = <<6/24=0.25>>0.25 dollars, which is 25 cents.\n#### 25"),
    ("Tom reads 18 pages a day. How many days does he need for a book of 126 pages?",
     "He needs 126 / 18 = <<126/18=7>>7 days.\n#### 7"),
    ("A farmer has 56 hens and sells a quarter of them. How many hens does he keep?",
     "He sells 56 / 4 = <<56/4=14>>14 hens.\nHe keeps 56 - 14 = <<56-14=42>>42.\n#### 42"),
]
TEST = [
    ("Ana buys 5 notebooks at 3 dollars each and a bag for 12 dollars. How much does she spend?",
     "Notebooks cost 5 * 3 = <<5*3=15>>15.\nShe spends 15 + 12 = <<15+12=27>>27 dollars.\n#### 27"),
    ("A class of 28 students splits into teams of 4. How many teams are there?",
     "There are 28 / 4 = <<28/4=7>>7 teams.\n#### 7"),
    ("Ben has 50 marbles, loses 12 and then finds 7. How many marbles does he have?",
     "50 - 12 = <<50-12=38>>38, and 38 + 7 = <<38+7=45>>45.\n#### 45"),
    ("A car uses 6 liters of fuel per 100 km. How many liters does it use for 350 km?",
     "It uses 6 * 350 / 100 = <<6*350/100=21>>21 liters.\n#### 21"),
    ("Zoe saves 9 dollars a week. How many weeks until she has 81 dollars?",
     "She needs 81 / 9 = <<81/9=9>>9 weeks.\n#### 9"),
    ("A baker makes 144 rolls and packs them in bags of 12. How many bags does he fill?",
     "He fills 144 / 12 = <<144/12=12>>12 bags.\n#### 12"),
    ("A pool holds 900 liters and a hose fills 30 liters a minute. How many minutes does filling take?",
     "It takes 900 / 30 = <<900/30=30>>30 minutes.\n#### 30"),
    ("Kim has 3 times as many shells as Lee, who has 16. How many shells do they have together?",
     "Kim has 3 * 16 = <<3*16=48>>48.\nTogether 48 + 16 = <<48+16=64>>64.\n#### 64"),
]

CHAT_TEMPLATE = (  # ChatML, as SmolLM2 and Qwen use; TRL's completion-only loss relies on prefix stability
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class CheckFailed(Exception):
    """A phase ran but produced something wrong."""


def require(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


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


def write_fixture(data_dir: Path) -> None:
    from treesynth.io import write_jsonl

    for name, items in (("train", TRAIN), ("test", TEST)):
        write_jsonl(data_dir / "gsm8k" / f"{name}.jsonl", [{"question": q, "answer": a} for q, a in items])


def tokenizer_corpus() -> list[str]:
    """What the model will read: our prompt templates, task YAMLs and the fixture."""
    texts = [p.read_text() for p in sorted((REPO / "treesynth" / "prompts").glob("*.txt"))]
    texts += [p.read_text() for p in sorted((REPO / "conf" / "task").glob("*.yaml"))]
    texts += [f"{q}\n{a}" for q, a in TRAIN + TEST]
    return texts


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE (every byte is a token, so any text and any JSON grammar can be encoded) with
    SmolLM2's special tokens and ChatML template; trained in about a second, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(out: Path, shape: str) -> dict[str, Any]:
    """Random-weight Llama of `shape` + tokenizer, saved as a normal HF directory (fp32 weights)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = build_tokenizer(2048)
    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"shape": shape, "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
            "hidden": hidden, "layers": layers}


# ---- measurement ---------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak RSS of this process or of its largest child (torchrun, run.py), so far."""
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(usage / 1024, 1)  # ru_maxrss is in KiB on Linux


class DeviceMemoryPoller:
    """Peak device-wide GPU memory in use (every process, cudaMemGetInfo) while a phase runs: the only
    view of what a subprocess (torchrun, the vLLM engine) used."""

    def __init__(self, interval_s: float = 0.2):
        import torch

        self.torch, self.interval_s = torch, interval_s
        self.peak = self.baseline = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        free, total = self.torch.cuda.mem_get_info()
        return total - free

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._used())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._used())


class _Collect(logging.Handler):
    def __init__(self, sink: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(record.getMessage())
        except Exception:
            self.handleError(record)


class PlacementWarnings:
    """Warnings (Python's and transformers' logger's) that mention a device or a dtype, collected for the
    report; generate() on inputs from another device is an error outright."""

    PATTERN = re.compile(r"device|dtype|bf16|fp16|half precision|autocast", re.I)

    def __init__(self) -> None:
        self.seen: list[str] = []
        warnings.filterwarnings("error", message=".*being on a device type different.*")
        self._show = warnings.showwarning
        warnings.showwarning = self._warning
        handler = _Collect(self._note)
        logging.getLogger().addHandler(handler)
        logging.getLogger("transformers").addHandler(handler)  # transformers' loggers do not propagate

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self._note(f"{category.__name__}: {message}")
        self._show(message, category, filename, lineno, file, line)

    def _note(self, text: str) -> None:
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        if self.PATTERN.search(first) and first not in self.seen:
            self.seen.append(first)


@dataclass
class Phase:
    name: str
    status: str = "skipped"
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class Check:
    """Runs phases in order; on CUDA each gets a fresh peak-memory window and must have used the GPU."""

    def __init__(self, device: str):
        self.device = device
        self.phases: list[Phase] = []

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> Phase:
        import torch

        phase = Phase(name)
        self.phases.append(phase)
        cuda = self.device == "cuda"
        poller = None
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            start_alloc = torch.cuda.memory_allocated()
            poller = DeviceMemoryPoller()
        print(f"[gpu_check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            phase.metrics = fn()
        except Exception as e:
            phase.status = "FAIL"
            phase.note = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            traceback.print_exc()
        finally:
            phase.seconds = round(time.perf_counter() - t0, 1)
            device_peak = poller.stop() if poller else 0
        if phase.status == "FAIL":
            return phase
        in_process = not phase.metrics.pop("_subprocess", False)
        if cuda:
            grown = device_peak - poller.baseline
            phase.metrics["peak_gpu_device_mib"] = round(grown / 2**20, 1)
            if in_process:
                grown = torch.cuda.max_memory_allocated() - start_alloc
                phase.metrics["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            # A phase that left the GPU idle ran on the CPU behind our back: that is a placement bug.
            if grown < 2**20:
                phase.status, phase.note = "FAIL", "the GPU was not used (its memory in use did not grow)"
                return phase
        phase.metrics["peak_rss_mib"] = peak_rss_mb()
        phase.status = "ok"
        print(f"[gpu_check] {name} ok in {phase.seconds}s: {json.dumps(phase.metrics)}", flush=True)
        return phase

    def skip(self, name: str, why: str) -> None:
        self.phases.append(Phase(name, "skipped", note=why))


# ---- phases ---------------------------------------------------------------------------------------------


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
