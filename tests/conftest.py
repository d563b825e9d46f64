"""Shared test fixtures: compose the real Hydra config with test-safe overrides."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FIX_DIR = REPO / "tests" / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "TREESYNTH_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["TREESYNTH_DATA_DIR"] = str(SHARED_DATA)


def compose_config(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The repo's config as `python run.py <overrides>` would see it, writing only under tmp_path."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(
            "config",
            overrides=[f"paths.artifacts={tmp_path / 'artifacts'}", f"paths.results={tmp_path / 'results'}",
                       "wandb.mode=disabled", *overrides],
        )


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    return lambda *overrides: compose_config(list(overrides), tmp_path)
