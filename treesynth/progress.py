"""Progress of a long stage while it works: counts done / target, rate, ETA and, where LLMs are involved,
requests/s, tokens and dollars so far.

On a terminal it is a live tqdm bar; in a log or under a launcher (no TTY) it is a log line after
`progress.first_s` seconds (the rate and the ETA early), then one every `progress.every_s` seconds
(conf/config.yaml), written by a timer thread, so a stage stuck on a slow endpoint still reports, and a
last one with the final counts when it ends (if it reported at all). `progress.bar`: auto (bar on a TTY) |
always | never. The totals stay in the stage metrics (`Progress.totals()`), the lines are only the live view.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import DictConfig

from treesynth.settings import ProgressSettings, load

log = logging.getLogger("treesynth")

_configured: ProgressSettings | None = None  # the run's `progress` settings, set once per stage by configure()


def configure(cfg: DictConfig) -> None:
    """Make the run's `progress` settings the default of every Progress in this process (the stage calls
    it; code deep inside a stage, e.g. the tree builder, then needs no config). A process that never calls
    it (a test, a library caller) gets neither a bar nor log lines unless it passes every_s / bar."""
    global _configured
    _configured = load(cfg.progress, ProgressSettings, "progress")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _count(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(int(n))


class Progress:
    """`done` of `total` `unit`s; `llms`: objects with `.stats` (LLMStats) whose requests, tokens and
    cost are summed into every line; `extra()`: more fields for the line (e.g. nodes pending)."""

    def __init__(self, name: str, total: int | None = None, unit: str = "records", *, llms: Iterable[Any] = (),
                 every_s: float | None = None, first_s: float | None = None, bar: str | None = None,
                 extra: Callable[[], dict[str, Any]] | None = None):
        self.name, self.total, self.unit = name, total, unit
        given = [x for x in llms if x is not None]
        self.llms = [x for i, x in enumerate(given) if all(x is not y for y in given[:i])]  # generator may be teacher
        if every_s is None and _configured is not None:
            every_s, first_s = _configured.every_s, first_s or _configured.first_s
        self.every_s = every_s  # None: no log lines
        self.first_s = min(first_s or every_s, every_s) if every_s is not None else None
        bar = bar if bar is not None else _configured.bar if _configured is not None else "never"
        self.extra = extra
        self.done = 0
        self._last = (0.0, 0)  # (elapsed, done) at the last line
        self._closed = False
        self.lines = 0
        self.start = time.monotonic()
        self._base = self._llm_totals()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        use_bar = bar == "always" or (bar == "auto" and sys.stderr.isatty())
        if use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=f"[{name}]", unit=unit[:-1] if unit.endswith("s") else unit,
                             dynamic_ncols=True, leave=False)
        elif every_s is not None:
            self._thread = threading.Thread(target=self._tick, name=f"progress-{name}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ counting
    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            self._bar.set_postfix_str(self._llm_part(), refresh=False)

    def set(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        self.update(done - self.done)

    # ------------------------------------------------------------------ reporting
    def _llm_totals(self) -> dict[str, float]:
        keys = ("requests", "calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd")
        return {k: float(sum(getattr(x.stats, k) for x in self.llms)) for k in keys}

    def llm_delta(self) -> dict[str, float]:
        """What the LLMs did since this progress started."""
        now = self._llm_totals()
        return {k: now[k] - self._base[k] for k in now}

    def _llm_part(self) -> str:
        if not self.llms:
            return ""
        d = self.llm_delta()
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return (f"requests {int(d['requests'])} ({d['calls'] / elapsed:.0f} calls/s, {int(d['cache_hits'])} cached)"
                f" | tokens {_count(d['prompt_tokens'])} in / {_count(d['completion_tokens'])} out"
                f" | ${d['cost_usd']:.4f}")

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        parts = []
        if self.total:
            pct = 100.0 * self.done / self.total
            parts.append(f"{self.unit} {self.done}/{self.total} ({pct:.0f}%)")
        else:
            parts.append(f"{self.unit} {self.done}")
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts.append(f"{rate:.1f}/s")
        if self.extra is not None:
            parts.append(", ".join(f"{k} {v}" for k, v in self.extra().items()))
        llm = self._llm_part()
        if llm:
            parts.append(llm)
        parts.append(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        parts.append(f"elapsed {_duration(elapsed)}")
        # The ETA goes by the rate since the last line: a stage that fills a pipeline first (synthesis
        # writes its first records only after their prompts and answers came) starts slow. Under 1% done
        # there is no telling yet.
        since, done_then = self._last
        recent = (self.done - done_then) / (elapsed - since) if elapsed > since and self.done > done_then else rate
        self._last = (elapsed, self.done)
        if self.total and 0.01 * self.total <= self.done < self.total and recent > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / recent)}")
        return f"[{self.name}] " + " | ".join(parts)

    def _tick(self) -> None:
        wait = self.first_s
        while not self._stop.wait(wait):
            log.info("%s", self.line())
            self.lines += 1
            wait = self.every_s

    def totals(self) -> dict[str, Any]:
        """For the stage metrics: elapsed seconds and the rates over the whole stage."""
        elapsed = time.monotonic() - self.start
        d = self.llm_delta()
        out: dict[str, Any] = {"elapsed_s": round(elapsed, 2), f"{self.unit}_per_s": round(self.done / max(elapsed, 1e-9), 2)}
        if self.llms:
            out["llm_calls_per_s"] = round(d["calls"] / max(elapsed, 1e-9), 2)
        return out

    def close(self, final_line: bool = False) -> None:
        """Stop reporting (again: no-op). A stage that reported at all ends with a line of its final counts;
        `final_line`: also one that never did (a stop the user must see the counts of)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if (thread is not None and self.lines) or (final_line and not self._closed):
            log.info("%s | finished", self.line())
            self.lines += 1
        self._closed = True
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
