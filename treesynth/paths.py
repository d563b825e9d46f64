"""Every cache the project keeps, named in one place.

Under the artifacts root (`paths.artifacts`), shared by every run that writes there and removed with it:
`.cache/llm` (the request cache and batch checkpoints), `.cache/decontam` (benchmark n-gram indexes),
`.cache/embeddings` (diversity embeddings, by content). Per user, outside any run: `$TREESYNTH_CACHE` or
`~/.cache/treesynth` (the embedded model's files; the Makefile keeps its llama.cpp wheel there too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

ArtifactCache = Literal["llm", "decontam", "embeddings"]


def artifact_cache(artifacts: str | Path, name: ArtifactCache) -> Path:
    """The cache `name` under an artifacts root."""
    return Path(artifacts) / ".cache" / name


def user_cache() -> Path:
    """The per-user cache (models), `$TREESYNTH_CACHE` when set."""
    return Path(os.environ.get("TREESYNTH_CACHE", Path.home() / ".cache" / "treesynth")).expanduser()
