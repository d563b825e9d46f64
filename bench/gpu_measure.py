"""How the GPU check (bench/gpu_check.py) runs and measures a phase: peak RSS, peak GPU memory (this
process and device-wide), device/dtype warnings, and the pass/fail of each phase."""

from __future__ import annotations

import gc
import json
import logging
import re
import resource
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class CheckFailed(Exception):
    """A phase ran but produced something wrong."""


def require(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


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


