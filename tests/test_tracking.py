"""W&B tracking: an offline run folder holds stage metrics, data samples and images; W&B never fails a run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from treesynth.io import write_jsonl
from treesynth.tracking import Tracker, hydra_group_and_name


def _stage_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A synthesize dir with data.jsonl and a diversity dir with a PNG, as the stages leave them."""
    from treesynth.metrics.plots import plot_similarity_bars

    syn, div = tmp_path / "synthesize", tmp_path / "diversity"
    write_jsonl(syn / "data.jsonl", [{"id": str(i), "method": "treesynth", "prompt": f"question {i}?",
                                      "completion": "#### 1", "meta": {"leaf_id": "0.1"}} for i in range(60)])
    plot_similarity_bars({"treesynth": 0.3, "temperature": 0.5}, div / "tsne.png")  # any real PNG
    return syn, div


def _offline_run(root: Path) -> Path:
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((root / "wandb").iterdir()) if (root / "wandb").exists() else root
    return runs[0]


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: never touch the network in tests


@pytest.mark.parametrize("mode", ["offline", "online"])  # online without a key falls back to offline
def test_offline_run_folder_holds_metrics_table_and_image(make_cfg, tmp_path, no_key, mode):
    wb_dir = tmp_path / f"wb-{mode}"
    cfg = make_cfg(f"wandb.mode={mode}", f"wandb.dir={wb_dir}", "wandb.group=sweep-a", "data.size=1000")
    tracker = Tracker(cfg, {"data": {"size": 1000}, "llm": {"api_key": "<redacted>"}})
    assert tracker.run is not None
    syn, div = _stage_dirs(tmp_path)
    tracker.log_stage("synthesize", {"records": 60}, syn)
    tracker.log_stage("diversity", {"mean_cosine_similarity": 0.4321, "vendi_score": 12.5,
                                    "embedding_model": "sentence-transformers/all-MiniLM-L6-v2",
                                    "leaves": {"entropy": 1.5}}, div)
    tracker.finish()
    assert tracker.run is None

    run = _offline_run(wb_dir)
    images = list((run / "files" / "media" / "images").glob("**/*.png"))
    assert any("tsne" in p.name for p in images), images
    tables = list((run / "files" / "media" / "table").glob("**/*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == 50 and table["data"][0][table["columns"].index("prompt")] == "question 0?"
    # The run's record log holds the metrics, data scale, group and config (protobuf, keys stored as text).
    needles = (b"diversity/mean_cosine_similarity", b"0.4321", b"diversity/leaves/entropy", b"data/size",
               b"synthesize/records", b"sweep-a", b"<redacted>")
    deadline = time.time() + 60
    while True:  # wandb-core may still be writing the log after finish() returns on a busy machine
        blob = next(run.glob("run-*.wandb")).read_bytes()
        missing = [n for n in needles if n not in blob]
        if not missing or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not missing


def test_disabled_mode_is_a_no_op(make_cfg, tmp_path):
    tracker = Tracker(make_cfg("wandb.mode=disabled", f"wandb.dir={tmp_path}"), {})
    assert tracker.run is None
    tracker.log_stage("diversity", {"x": 1.0}, tmp_path)
    tracker.finish()
    assert not (tmp_path / "wandb").exists()


def test_tracking_failures_never_fail_a_run(make_cfg, tmp_path, no_key, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = Tracker(make_cfg("wandb.mode=online", f"wandb.dir={tmp_path}"), {})
    assert tracker.run is None  # both online and the offline fallback failed: run goes on untracked
    tracker.log_stage("diversity", {"x": np.float64(1.0)}, tmp_path)
    tracker.finish()


def test_group_defaults_to_nothing_outside_hydra_multirun():
    assert hydra_group_and_name() == (None, None)


# ------------------------------------------------------------------------------------- W&B Artifacts
def _records(run_dir: Path) -> list:
    """The protobuf records of an offline run's `run-*.wandb` file (LevelDB log format: 7-byte file
    header, 32 KiB blocks of chunks `crc32 | length (LE) | type | data`; type 1 full, 2 first, 3 middle,
    4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    block, pos, out, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(pb.Record.FromString(parts))
            parts = b""
    return out


def _artifact_records(run_dir: Path, want: int) -> list:
    deadline = time.time() + 60
    while True:  # wandb-core may still be writing after finish() on a busy machine
        arts = [r.artifact for r in _records(run_dir) if r.WhichOneof("record_type") == "artifact"
                and r.artifact.type in ("dataset", "model")]  # tables are artifacts too
        if len(arts) >= want or time.time() > deadline:
            return arts
        time.sleep(0.5)


def _fake_stage_outputs(monkeypatch):
    """Stage bodies that write what the real stages leave (data.jsonl + tree files, adapter/, eval.json)."""
    from treesynth import pipeline

    def body(ctx):
        if ctx.stage == "synthesize":
            write_jsonl(ctx.dir / "data.jsonl", [{"id": str(i), "prompt": f"q{i}", "completion": "#### 1",
                                                  "meta": {}} for i in range(3)])
            (ctx.dir / "tree.json").write_text('{"root": "0", "nodes": {}}')
            (ctx.dir / "tree.html").write_text("<html></html>")
            return {"records": 3}
        if ctx.stage == "train":
            (ctx.dir / "adapter").mkdir()
            (ctx.dir / "adapter" / "adapter_config.json").write_text("{}")
            (ctx.dir / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
            return {"final_loss": 0.5}
        (ctx.dir / "eval.json").write_text("{}")
        return {"benchmarks": {}}

    monkeypatch.setattr(pipeline, "_entry", lambda stage: body)


def test_offline_run_holds_dataset_and_model_artifacts_with_lineage(make_cfg, tmp_path, no_key, monkeypatch):
    """The real pipeline hook: synthesize -> dataset artifact, train -> model artifact that used it,
    evaluate uses the model; names carry our artifact keys; a rerun reusing the artifacts logs the same
    names and digests (one W&B version)."""
    from treesynth.pipeline import run_pipeline, stage_key

    _fake_stage_outputs(monkeypatch)
    wb_dir = tmp_path / "wb"
    cfg = make_cfg("wandb.mode=offline", f"wandb.dir={wb_dir}", "stages=[evaluate]")
    run_pipeline(cfg, tmp_path / "run")
    dataset, model = f"dataset-{stage_key(cfg, 'synthesize')}", f"model-{stage_key(cfg, 'train')}"

    arts = _artifact_records(_offline_run(wb_dir), 4)
    produced = {(a.type, a.name): a for a in arts if not a.use_after_commit}
    used = {(a.type, a.name): a for a in arts if a.use_after_commit}
    assert set(produced) == {("dataset", dataset), ("model", model)}
    assert set(used) == {("dataset", dataset), ("model", model)}  # train used the data, evaluate the model
    files = {e.path for e in produced[("dataset", dataset)].manifest.contents}
    assert files == {"data.jsonl", "tree.json", "tree.html"}
    assert {e.path for e in produced[("model", model)].manifest.contents} == {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    meta = json.loads(produced[("model", model)].metadata)
    assert meta["dataset_artifact"] == dataset and meta["metrics"]["final_loss"] == 0.5
    for kind in (("dataset", dataset), ("model", model)):  # what train / evaluate used is what was logged
        assert used[kind].digest == produced[kind].digest and used[kind].metadata == produced[kind].metadata

    # A rerun reuses every stage: the same artifact names and contents (W&B dedups to one version).
    for run in (wb_dir / "wandb").glob("offline-run-*"):
        import shutil

        shutil.rmtree(run)
    run_pipeline(cfg, tmp_path / "rerun")
    again = {(a.type, a.name): a.digest for a in _artifact_records(_offline_run(wb_dir), 4)
             if not a.use_after_commit}
    assert again == {k: a.digest for k, a in produced.items()}


def test_artifact_errors_are_warnings(make_cfg, tmp_path, no_key, monkeypatch, caplog):
    import wandb

    tracker = Tracker(make_cfg("wandb.mode=offline", f"wandb.dir={tmp_path}"), {})
    syn, _ = _stage_dirs(tmp_path)

    def broken(*a, **kw):
        raise RuntimeError("artifact storage is full")

    monkeypatch.setattr(wandb, "Artifact", broken)
    tracker.log_stage("synthesize", {"records": 60}, syn)
    tracker.finish()
    assert "artifact storage is full" in caplog.text


def test_large_model_folders_are_referenced_not_uploaded(make_cfg, tmp_path, no_key, monkeypatch):
    """Full fine-tuned weights (over MAX_UPLOAD_BYTES) enter the model artifact as file:// references."""
    from treesynth import tracking

    monkeypatch.setattr(tracking, "MAX_UPLOAD_BYTES", 10)
    train = tmp_path / "train" / "0123456789abcdef"
    (train / "model").mkdir(parents=True)
    (train / "model" / "model.safetensors").write_bytes(b"\1" * 100)
    (train / "train.json").write_text("{}")
    tracker = Tracker(make_cfg("wandb.mode=offline", f"wandb.dir={tmp_path}"), {})
    art = tracker.artifact("train", train)
    entries = {path: e for path, e in art.manifest.entries.items()}
    assert set(entries) == {"model/model.safetensors", "train.json"}
    assert entries["model/model.safetensors"].ref == (train / "model" / "model.safetensors").as_uri()
    assert entries["train.json"].ref is None
    tracker.finish()
