"""What a synthesis method is. A method produces PROMPT records (the question/instruction samples plus
meta) as a deterministic stream: `await method.prompts(n)` returns the records at stream positions
0..n-1 (positions whose generation failed are skipped), in stream order, and a later call with a larger
n returns the same records first and only generates the missing ones. The shared synthesis stage
(treesynth/synthesize.py) asks for more positions when the teacher or hygiene drops records, so every
method gets exact sizing, the teacher step, hygiene and resume for free.

A method checkpoints whatever it generates in `env.work_dir` (append-only logs via `Checkpoint`), so a
killed run resumes without losing or duplicating records; every LLM request carries a seed from
`derive_seed(env.seed, <what it is for>, ...)`, so reruns hit the request cache.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from treesynth.io import JsonlAppender, iter_jsonl
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

    def plan(self, size: int) -> dict[str, Any] | None:
        """Expected LLM calls/tokens before anything is spent (method.plan_only); None = not supported."""
        return None

    def finalize(self, records: list[dict]) -> dict[str, Any]:
        """Called once with the final data.jsonl records: write method artifacts (tree.json, ...) and
        return metrics for the stage summary."""
        return {}


class Checkpoint:
    """An append-only event log in the work dir: `rows()` replays what a killed run already wrote."""

    def __init__(self, path: Path):
        self.path = path
        self._appender: JsonlAppender | None = None

    def rows(self) -> Iterator[dict]:
        return iter_jsonl(self.path) if self.path.exists() else iter(())

    def append(self, row: dict) -> None:
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        self._appender.append(row)

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None
