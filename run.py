"""Entry point: `python run.py [overrides]` runs one experiment; `python run.py -m ...` sweeps.

Stages (stages=[...]): synthesize -> diversity -> train -> evaluate_base / evaluate. Each stage's artifact
is keyed by the config it depends on, so reruns and sweeps reuse what already exists.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from treesynth.errors import TreesynthError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    from treesynth.preflight import preflight

    # Relative paths are relative to where run.py was launched, also inside launcher jobs.
    cfg.paths.artifacts = to_absolute_path(str(cfg.paths.artifacts))
    cfg.paths.results = to_absolute_path(str(cfg.paths.results))
    try:
        preflight(cfg)  # bad settings or input files: one line now, before the heavy imports below
        from treesynth.pipeline import run_pipeline

        summary = run_pipeline(cfg, HydraConfig.get().runtime.output_dir)
    except TreesynthError as e:
        print(f"error: {e}", file=sys.stderr)  # one line on stderr (Hydra's console log goes to stdout)
        sys.exit(2)
    from treesynth.summary import print_summary

    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
