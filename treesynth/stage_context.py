"""The contract between the pipeline and its stages, below both (docs/ARCHITECTURE.md, "Import graph"):
what a stage function receives (`StageContext`) and the file that marks its artifact finished."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

DONE_FILE = "stage.json"  # {stage, key, metrics, finished, upstream: {stage: key}, command}


@dataclass
class StageContext:
    """What a stage function receives. It writes its outputs under `dir` and returns metrics."""

    cfg: DictConfig
    stage: str
    key: str
    dir: Path
    inputs: dict[str, Path] = field(default_factory=dict)  # upstream stage -> its artifact dir
    tracker: Any = None
