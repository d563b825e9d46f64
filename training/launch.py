"""Multi-GPU / multi-node training with the same config as `run.py`:

    python run.py stages=[synthesize] model=qwen2_5_7b ...                  # once, one process
    accelerate launch --num_processes 8 -m training.launch model=qwen2_5_7b ...   # the train stage
    python run.py model=qwen2_5_7b ...                                       # evaluation etc.; train is reused

(`torchrun --nproc_per_node 8 -m training.launch ...` works the same; add `--config_file` with an FSDP or
DeepSpeed accelerate config for train=full on 7-8B models.) Device placement comes from the launcher:
nothing here pins a device.

Why not `accelerate launch run.py`: run.py's stage lock would let only one rank into the train stage
while the others wait on the lock, and the first rank waits for them in the process group: a
deadlock. Here rank 0 goes through the normal pipeline (lock, W&B, stage.json, summary.json) and the
other ranks join the same training directly, writing nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from treesynth.errors import TreesynthError

log = logging.getLogger("treesynth")
CONF = str(Path(__file__).resolve().parents[1] / "conf")


def launch(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    """Train on every rank of the launched process group; rank 0 records the stage as run.py would."""
    import torch
    from accelerate import PartialState

    from treesynth.pipeline import is_done, run_pipeline, run_unrecorded

    if not is_done(cfg, "synthesize"):
        raise TreesynthError(
            "training.launch trains only: run `python run.py stages=[synthesize]` with the same overrides first"
        )
    # Joins the process group accelerate launch / torchrun set up (gloo when CPU-only, as in our tests).
    state = PartialState(cpu=not torch.cuda.is_available())
    done_before = is_done(cfg, "train")  # every rank decides before rank 0 can write stage.json
    state.wait_for_everyone()
    result = None
    if state.is_main_process:
        cfg.stages = ["train"]
        result = run_pipeline(cfg, run_dir)
    elif not done_before:
        run_unrecorded(cfg, "train")
    state.wait_for_everyone()
    return result


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> None:
    cfg.paths.artifacts = to_absolute_path(cfg.paths.artifacts)
    cfg.paths.results = to_absolute_path(cfg.paths.results)
    try:
        launch(cfg, HydraConfig.get().runtime.output_dir)
    except TreesynthError as e:
        log.error("error: %s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
