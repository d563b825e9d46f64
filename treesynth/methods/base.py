"""What a synthesis method is. A method produces PROMPT records (the question/instruction samples plus
meta) as a deterministic stream: `await method.prompts(n)` returns the records at stream positions
0..n-1 (positions whose generation failed are skipped), in stream order, and a later call with a larger
n returns the same records first and only generates the missing ones. The shared synthesis stage
(treesynth/synthesize.py) asks for more positions when the teacher or hygiene drops records, so every
method gets exact sizing, the teacher step, hygiene and resume for free.

A method checkpoints whatever it generates in `env.work_dir` (append-only logs: treesynth/io.py `Checkpoint`,
or `KeyedLog` when read by key; `gather_logged` runs a batch of calls into one), so a killed run resumes
without losing or duplicating records; every LLM request carries a seed from
`derive_seed(env.seed, <what it is for>, ...)`, so reruns hit the request cache.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from omegaconf import DictConfig

from treesynth.io import JsonlAppender, encode_line
from treesynth.llm import LLM
from treesynth.tasks import TaskSpec


@dataclass
class PromptRecord:
    id: str  # stable for a given config and seed (e.g. "<leaf>/<slot>"): reruns give the same id
    prompt: str  # the question or instruction as posed to the model (task.build_prompt(sample))
    sample: dict[str, str]  # the generator's fields (the teacher may need them, e.g. SimpleToM's key)
    meta: dict[str, Any] = field(default_factory=dict)  # leaf_id, path attributes, draw seeds, ...
    completion: str | None = None  # set by methods that bring their own (human data): skips the teacher


@dataclass
class MethodEnv:
    llm: LLM  # the generator
    task: TaskSpec
    cfg: DictConfig  # cfg.method
    seed: int
    work_dir: Path  # the synthesis stage's artifact dir: checkpoints go here
    root_cfg: DictConfig  # the whole config (data.dir, data.size, ...), read-only


class Method(ABC):
    name: ClassVar[str]
    # method config keys that name local files the output depends on (their content is in the artifact key)
    input_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, env: MethodEnv):
        self.env = env

    @abstractmethod
    async def prompts(self, n: int) -> list[PromptRecord]:
        """The records at stream positions [0, n) that generated successfully, in stream order."""

    async def prompts_between(self, start: int, stop: int) -> list[PromptRecord]:
        """The records at stream positions [start, stop): what the stage streams through, one chunk at a
        time. A streaming method overrides this so a chunk costs its own positions only (TreeSynth,
        Evol-Instruct and the call-based baselines do); the default slices the prefix: the same records."""
        before = len(await self.prompts(start)) if start else 0
        return (await self.prompts(stop))[before:]

    def plan(self, size: int) -> dict[str, Any] | None:
        """Expected LLM calls/tokens before anything is spent (method.plan_only); None = not supported."""
        return None

    def finalize(self, records: Iterable[dict]) -> dict[str, Any]:
        """Called once with the final data.jsonl records (an iterable read from disk, in order): write
        method artifacts (tree.json, ...) and return metrics for the stage summary."""
        return {}


class KeyedLog:
    """An append-only JSONL checkpoint read by key (`row[key]`, or the tuple of several fields' values)
    with only key -> byte offset in memory: the rows stay on disk, so a log of a million rows costs a dict
    of keys. Rows appended since the last `forget()` are also held (the chunk being worked on is read
    without going to disk). `on_row` sees every row replayed from disk: a caller's own small index (a count
    per row, not the row) without reading the file twice.

    Appends are group-committed: one write and one fsync per FLUSH_ROWS rows or FLUSH_S seconds (and on
    forget/close), not per row; a fsync per row caps a run at a few hundred rows a second on a busy or
    network disk. Rows a SIGKILL catches unwritten cost nothing: the request cache has their answers."""

    FLUSH_ROWS = 64
    FLUSH_S = 0.2

    def __init__(self, path: Path, key: str | tuple[str, ...], on_row: Callable[[dict], None] | None = None):
        self.path, self.key = path, key
        self.offsets: dict[Any, int] = {}
        self.recent: dict[Any, dict] = {}
        self._size = 0
        self._pending: list[bytes] = []
        self._last_flush = time.monotonic()
        self._appender: JsonlAppender | None = None
        if path.exists():
            with open(path, "rb") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a torn last line (killed mid-append): the appender cuts it off
                    self.offsets[self.key_of(row)] = self._size
                    self._size += len(line)
                    if on_row is not None:
                        on_row(row)

    def key_of(self, row: dict) -> Any:
        return row[self.key] if isinstance(self.key, str) else tuple(row[k] for k in self.key)

    def __contains__(self, k: object) -> bool:
        return k in self.offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, k: Any) -> dict:
        row = self.recent.get(k)
        if row is not None:
            return row
        with open(self.path, "rb") as f:
            f.seek(self.offsets[k])
            return json.loads(f.readline())

    def get_many(self, keys: Iterable[Any]) -> dict[Any, dict]:
        """Rows for these keys in one pass over the file (keys not in the log are left out)."""
        keys = list(keys)
        out = {k: self.recent[k] for k in keys if k in self.recent}
        wanted = sorted((self.offsets[k], k) for k in keys if k in self.offsets and k not in out)
        if wanted:
            with open(self.path, "rb") as f:
                for offset, k in wanted:
                    f.seek(offset)
                    out[k] = json.loads(f.readline())
        return out

    def append(self, row: dict) -> None:
        line = encode_line(row)
        k = self.key_of(row)
        self.offsets[k] = self._size
        self.recent[k] = row
        self._size += len(line)
        self._pending.append(line)
        if len(self._pending) >= self.FLUSH_ROWS or time.monotonic() - self._last_flush >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            if self._appender is None:
                self._appender = JsonlAppender(self.path)
            self._appender.append_lines(self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def forget(self) -> None:
        """Drop the rows held in memory (written first; they stay readable from disk)."""
        self.flush()
        self.recent.clear()

    def close(self) -> None:
        self.flush()
        if self._appender is not None:
            self._appender.close()
            self._appender = None


LOG_SLICE = 256  # rows gather_logged appends between two turns of the event loop


class AppendLog(Protocol):
    """What `gather_logged` writes to: a `Checkpoint` or a `KeyedLog`."""

    def append(self, row: dict) -> None: ...

    def close(self) -> None: ...


async def gather_logged(calls: Iterable[Awaitable[dict]], log: AppendLog,
                        keep: Callable[[dict], None] | None = None, llm: LLM | None = None) -> None:
    """Run `calls` concurrently, then append the rows they returned to `log` in call order (each handed to
    `keep` first, e.g. to index it), so a replay of the log sees the same order whatever finished first.
    A call that raised (a budget stop) does not stop the others: every row that came back is logged before
    the first error is re-raised, so none is paid for twice. The log is closed on every path (an
    interrupt too), which writes out what a `KeyedLog` still buffers. With `llm` (the one the calls ask),
    each call starts once that LLM admits it (`LLM.gather`)."""
    try:
        results = await (asyncio.gather(*calls, return_exceptions=True) if llm is None else llm.gather(calls))
        for i, row in enumerate(results):
            if not isinstance(row, BaseException):
                if keep is not None:
                    keep(row)
                log.append(row)
            if i % LOG_SLICE == LOG_SLICE - 1:
                await asyncio.sleep(0)  # answers in flight are taken in between
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
    finally:
        log.close()
