"""W&B tracking: one W&B run per Hydra job, grouped by experiment/sweep.

Mode comes from config (offline default, disabled in tests). W&B must never block or fail a run: every
call is guarded, and online mode without a key or without network falls back to offline.

What a run holds: the (secret-scrubbed) config; per stage its numeric metrics as `<stage>/<name>`
together with `data/size` (so scaling curves plot directly against data scale); the first records of
data.jsonl as a table; and every PNG the stage wrote (t-SNE). Artifacts are read from the stage's
directory, so a stage reused from the cache is logged the same way as one that just ran.

W&B Artifacts tie what trained on what: synthesize logs its data as a `dataset` artifact, train its
adapter (or full model) as a `model` artifact, and a stage declares the artifacts of its upstream stages
as inputs (train uses the dataset, evaluate the model, diversity the dataset). Names carry our artifact
key (`dataset-<key>`, `model-<key>`): a rerun that reuses a stage's output logs the same files under the
same name, so W&B keeps one version. Offline runs hold the same records and get their lineage on
`wandb sync`.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from collections.abc import Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from treesynth.io import iter_jsonl
from treesynth.settings import Wandb, load
from treesynth.stage_context import DONE_FILE

log = logging.getLogger("treesynth")

SAMPLE_ROWS = 50  # records of data.jsonl logged as a W&B table
WANDB_HOST = "api.wandb.ai"

# stage -> (W&B artifact type, the files and folders of its artifact dir that the W&B artifact holds)
ARTIFACTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "synthesize": ("dataset", ("data.jsonl", "tree.json", "tree.html")),
    "train": ("model", ("adapter", "model", "train.json")),
}
# Folders larger than this (full fine-tuned weights) enter a W&B artifact as file:// references: digests
# and lineage without uploading the weights again; LoRA adapters are far smaller and are uploaded.
MAX_UPLOAD_BYTES = 1 << 30
# What a W&B artifact's metadata records about the run config, per artifact type (dotted config paths).
ARTIFACT_CONFIG = {
    "dataset": ("task.name", "method.name", "llm.model", "teacher.model", "data.size", "seed"),
    "model": ("model.name", "model.path", "train.name", "seed"),
}


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:  # `wandb login` stores the key in ~/.netrc
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def hydra_group_and_name() -> tuple[str | None, str | None]:
    """(sweep dir name, job label) inside a Hydra multirun job; (None, None) otherwise."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None, None
        group = Path(hc.sweep.dir).name
        return group, f"{group}-{hc.job.override_dirname or hc.job.num}"
    except Exception:  # not under Hydra (tests, library use)
        return None, None


class Tracker:
    def __init__(self, cfg: DictConfig, config: dict[str, Any]):
        self.cfg = cfg
        self.run = None
        self.data_size = _number(cfg.data.size)
        wb = load(cfg.wandb, Wandb, "wandb")
        mode = wb.mode
        if mode == "disabled":
            return
        hydra_group, hydra_name = hydra_group_and_name()
        kwargs = dict(
            project=wb.project,
            group=wb.group or hydra_group,
            name=wb.name or hydra_name,
            dir=str(Path(wb.dir).expanduser()),
            config=config,
        )
        if mode == "online" and not _has_api_key():
            log.warning("wandb.mode=online but no W&B API key (WANDB_API_KEY or `wandb login`): logging offline instead")
            mode = "offline"
        self.run = self._init(mode, kwargs)
        if self.run is None and mode == "online":  # no network or rejected key: keep the data locally
            log.warning("W&B online init failed: logging offline instead (upload later with `wandb sync`)")
            self.run = self._init("offline", kwargs)
        if self.run is not None and self.data_size is not None:
            self._safe(self.run.summary.update, {"data/size": self.data_size})

    @staticmethod
    def _init(mode: str, kwargs: dict[str, Any]) -> Any:
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
            return wandb.init(mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(init_timeout=30, silent=True), **kwargs)
        except Exception as e:  # never fail a run for tracking
            log.warning("W&B %s init failed: %s", mode, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None

    def _safe(self, fn: Any, *a: Any, **kw: Any) -> None:
        if self.run is None:
            return
        try:
            fn(*a, **kw)
        except Exception as e:
            log.warning("W&B logging failed (ignored): %s", e)

    def log(self, data: dict[str, Any]) -> None:
        if self.run is not None:
            self._safe(self.run.log, data)

    def log_stage(self, stage: str, metrics: dict[str, Any], stage_dir: str | Path,
                  inputs: Mapping[str, Path] | None = None) -> None:
        """Metrics of one finished stage, plus its data samples and images, read from its artifact directory
        `stage_dir`; `inputs`: the upstream stages' artifact dirs (their W&B artifacts become this run's inputs)."""
        if self.run is None:
            return
        flat = {f"{stage}/{k}": v for k, v in _flatten(metrics).items() if isinstance(v, int | float | str)}
        numeric = {k: v for k, v in flat.items() if not isinstance(v, str)}
        payload: dict[str, Any] = dict(numeric)
        if self.data_size is not None:
            payload["data/size"] = self.data_size
        payload.update(self._media(stage, Path(stage_dir)))
        self.log(payload)
        self._safe(self.run.summary.update, flat)
        self._artifacts(stage, Path(stage_dir), inputs or {})

    def _artifacts(self, stage: str, stage_dir: Path, inputs: Mapping[str, Path]) -> None:
        """Declare the upstream stages' W&B artifacts as inputs of this run, and log this stage's own."""
        try:
            for up, folder in inputs.items():
                if up in ARTIFACTS:
                    art = self.artifact(up, Path(folder))
                    if art is not None:
                        self._use(art)
            if stage in ARTIFACTS:
                art = self.artifact(stage, stage_dir)
                if art is not None:
                    self.run.log_artifact(art)
        except Exception as e:  # never fail a run for tracking
            log.warning("W&B: could not log %s artifacts (ignored): %s", stage, e)

    def _use(self, art: Any) -> None:
        if self.run.offline:
            # run.use_artifact refuses offline runs; for a new artifact it writes exactly this record (log
            # it, then mark it used once committed), which `wandb sync` replays
            self.run._log_artifact(art, is_user_created=True, use_after_commit=True)
        else:
            self.run.use_artifact(art)

    def artifact(self, stage: str, folder: Path) -> Any:
        """A new wandb.Artifact of a stage's output folder (None when it holds none of the files); the
        same metadata whether this run made it or uses it. Files are read in place, not staged (policy
        immutable): a finished artifact dir never changes."""
        import wandb

        kind, names = ARTIFACTS[stage]
        meta: dict[str, Any] = {"stage": stage, "key": folder.name, "path": str(folder)}
        meta.update({k: OmegaConf.select(self.cfg, k, default=None) for k in ARTIFACT_CONFIG[kind]})
        done = folder / DONE_FILE
        record = json.loads(done.read_text()) if done.exists() else {}
        for up, key in (record.get("upstream") or {}).items():  # the inputs too, readable without lineage
            if up in ARTIFACTS:
                meta[f"{ARTIFACTS[up][0]}_artifact"] = artifact_name(up, key)
        metrics = record.get("metrics") or {}
        meta["metrics"] = {k: v for k, v in _flatten(metrics).items() if _number(v) is not None}
        art = wandb.Artifact(artifact_name(stage, folder.name), type=kind, metadata=meta)
        added = False
        for name in names:
            path = folder / name
            if path.is_file():
                art.add_file(str(path), name=name, policy="immutable")
            elif path.is_dir() and _folder_bytes(path) > MAX_UPLOAD_BYTES:
                art.add_reference(path.resolve().as_uri(), name=name)
            elif path.is_dir():
                art.add_dir(str(path), name=name, policy="immutable")
            else:
                continue
            added = True
        return art if added else None

    def _media(self, stage: str, d: Path) -> dict[str, Any]:
        """W&B objects for the files a stage left: data samples table and PNG images."""
        try:
            import wandb

            out: dict[str, Any] = {}
            data = d / "data.jsonl"
            if data.exists():
                table = sample_table(data)
                if table is not None:
                    out[f"{stage}/samples"] = table
            for png in sorted(d.glob("*.png")):
                out[f"{stage}/{png.stem}"] = wandb.Image(str(png))
            return out
        except Exception as e:
            log.warning("W&B: could not collect %s artifacts (ignored): %s", stage, e)
            return {}

    def finish(self) -> None:
        if self.run is not None:
            self._safe(self.run.finish)
            self.run = None


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def artifact_name(stage: str, key: str) -> str:
    """The W&B artifact name of a stage's output: its type and our artifact key."""
    return f"{ARTIFACTS[stage][0]}-{key}"


def _table(rows: list[dict[str, Any]]) -> Any:
    import wandb

    cols = list(dict.fromkeys(k for r in rows for k in r))
    return wandb.Table(columns=cols, data=[[_cell(r.get(c)) for c in cols] for r in rows])


def _cell(v: Any) -> str:
    # One column type per column: nested meta and numbers become JSON text.
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def sample_table(path: str | Path, n: int = SAMPLE_ROWS) -> Any:
    """The first n records of a data.jsonl as a wandb.Table (None when empty)."""
    rows = list(islice(iter_jsonl(path), n))
    return _table(rows) if rows else None


def _number(v: Any) -> float | int | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
