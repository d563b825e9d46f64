"""`python -m treesynth.export`: a dataset leaves with a card that says how it was made; the hub gets the
token from HF_TOKEN only; every export is recorded next to the artifact and linked from the report."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tests.conftest import CONF
from treesynth import pipeline
from treesynth.dataset_card import tree_summary
from treesynth.errors import TreesynthError
from treesynth.export import EXPORTS_FILE, load_source, main, read_exports, records_table
from treesynth.io import write_jsonl

TOKEN = "hf_secretTOKEN1234567890abcdef"
ROWS = [{"id": f"r{i}", "task": "gsm8k", "method": "treesynth", "prompt": f"Question {i}: 2 + {i}?",
         "completion": f"2 + {i} = {2 + i}\n#### {2 + i}",
         "meta": {"leaf_id": f"0.{i % 2 + 1}", "seed": i, "generator": "gen-model", "teacher": "gen-model"}}
        for i in range(7)]
TREE = {"root": "0", "leaves": ["0.1", "0.2.1", "0.2.2"], "nodes": {
    "0": {"id": "0", "depth": 0, "child_dimension": "topic", "children": ["0.1", "0.2"], "records": 7},
    "0.1": {"id": "0.1", "depth": 1, "value": "fractions", "children": [], "is_leaf": True, "records": 3},
    "0.2": {"id": "0.2", "depth": 1, "value": "geometry", "child_dimension": "shape",
            "children": ["0.2.1", "0.2.2"], "records": 4},
    "0.2.1": {"id": "0.2.1", "depth": 2, "value": "circle", "is_leaf": True, "records": 2},
    "0.2.2": {"id": "0.2.2", "depth": 2, "value": "square", "is_leaf": True, "records": 2}}}
DIVERSITY = {"n": 7, "mean_cosine_similarity": 0.4321, "vendi_score": 3.5, "distinct_2": 0.8}
OVERRIDES = ["method=treesynth", "data.size=7", "+llm.api_key=sk-do-not-save", "stages=[synthesize,diversity]"]


def _fake_stages(ctx):
    if ctx.stage == "synthesize":
        write_jsonl(ctx.dir / "data.jsonl", ROWS)
        (ctx.dir / "tree.json").write_text(json.dumps(TREE))
        (ctx.dir / "tree.html").write_text("<html>tree</html>")
        (ctx.dir / "tree.txt").write_text("root\n")
        return {"records": 7, "hygiene_input": 9, "exact_duplicates": 1, "near_duplicates": 0, "contaminated": 1,
                "hygiene_kept": 7, "tree_leaves": 3, "llm": {"requests": 20}}
    return dict(DIVERSITY)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A finished synthesize + diversity run made by the real pipeline under a Hydra job (stage bodies
    faked): summary.json, stage.json and stage_config.json as `python run.py` leaves them."""
    monkeypatch.setattr(pipeline, "_entry", lambda stage: _fake_stages)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", return_hydra_config=True, overrides=[
            f"paths.artifacts={tmp_path / 'artifacts'}", "wandb.mode=disabled", *OVERRIDES])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # the job's config, as Hydra hands it to run.py
        del cfg["hydra"]
    try:
        pipeline.run_pipeline(cfg, tmp_path / "outputs" / "run")
    finally:
        HydraConfig.instance().cfg = None
    return tmp_path / "outputs" / "run"


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _synthesize_dir(run: Path) -> Path:
    return Path(json.loads((run / "summary.json").read_text())["artifacts"]["synthesize"])


def test_dir_export_round_trips_every_record_with_a_card(run_dir, tmp_path, capsys):
    import datasets
    from huggingface_hub import DatasetCard

    out = tmp_path / "export"
    assert main([str(run_dir), "--to", "dir", str(out), "--format", "both", "--license", "cc-by-4.0"]) == 0
    assert datasets.load_from_disk(str(out / "disk")).to_list() == ROWS
    assert datasets.load_dataset(str(out), split="train").to_list() == ROWS  # through the card's configs
    assert {p.name for p in out.iterdir()} >= {"README.md", "data", "disk", "tree.json", "tree.html", "tree.txt"}

    meta = _front_matter(out / "README.md")
    assert meta["license"] == "cc-by-4.0" and meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-generation"] and {"synthetic", "treesynth", "gsm8k"} <= set(meta["tags"])
    ours = meta["treesynth"]
    assert (ours["task"], ours["method"], ours["size"], ours["requested_size"], ours["seed"]) == (
        "gsm8k", "treesynth", 7, 7, 0)
    assert ours["generator"] and ours["teacher"] == ours["generator"]
    assert ours["diversity"]["mean_cosine_similarity"] == 0.4321
    assert ours["hygiene"] == {"hygiene_input": 9, "exact_duplicates": 1, "near_duplicates": 0, "contaminated": 1,
                               "hygiene_kept": 7}
    assert ours["tree"]["depth"] == 2 and ours["tree"]["leaves"] == 3 and ours["tree"]["first_dimension"] == "topic"
    assert [(v["value"], v["records"], v["leaves"]) for v in ours["tree"]["first_level"]] == [
        ("fractions", 3, 1), ("geometry", 4, 2)]
    # The command is the Hydra job's overrides, secrets redacted.
    assert ours["command"] == (f"python run.py paths.artifacts={tmp_path / 'artifacts'} wandb.mode=disabled "
                               "method=treesynth data.size=7 '+llm.api_key=<redacted>' "
                               "'stages=[synthesize,diversity]'")
    assert "sk-do-not-save" not in (out / "README.md").read_text()
    assert DatasetCard.load(out / "README.md").data.license == "cc-by-4.0"  # the hub library reads it

    (entry,) = read_exports(_synthesize_dir(run_dir))
    assert entry["to"] == "dir" and entry["path"] == str(out.resolve())
    assert "exported 7 records" in capsys.readouterr().out


def test_artifact_folder_export_finds_its_diversity_and_command(run_dir, tmp_path):
    artifact = _synthesize_dir(run_dir)
    out = tmp_path / "from-artifact"
    assert main([str(artifact), "--to", "dir", str(out)]) == 0
    ours = _front_matter(out / "README.md")["treesynth"]
    assert ours["artifact_key"] == artifact.name and ours["size"] == 7
    assert ours["diversity"]["vendi_score"] == 3.5  # found through the diversity stage.json's upstream key
    assert ours["command"].startswith("python run.py paths.artifacts=")
    assert not (out / "disk").exists()
    assert _front_matter(out / "README.md")["license"] == "unknown"


def test_records_whose_meta_differs_round_trip_as_json_text(tmp_path):
    import datasets

    rows = [{"id": "a", "prompt": "p", "completion": "c", "meta": {"x": 1}},
            {"id": "b", "prompt": "p", "completion": "c", "meta": {"y": [1, 2]}}]
    table, as_json = records_table(rows)
    assert as_json  # a struct would give every record both fields
    back = datasets.Dataset(datasets.table.InMemoryTable(table)).to_list()
    assert [{**r, "meta": json.loads(r["meta"])} for r in back] == rows
    assert records_table(ROWS)[1] is False


def test_tree_summary_counts_an_infinite_child():
    doc = {"root": "0", "nodes": {"0": {"id": "0", "depth": 0, "child_dimension": "name", "children": ["0.1"]},
                                  "0.1": {"id": "0.1", "depth": 1, "values": ["a", "b", "c"], "is_leaf": True}}}
    summary = tree_summary(doc)
    assert summary["first_level"] == [{"value": "any of 3 values", "records": 0, "leaves": 1, "next_dimension": None}]


def test_bad_sources_and_targets_are_one_line_errors(run_dir, tmp_path, capsys):
    with pytest.raises(TreesynthError, match="neither a run folder"):
        load_source(tmp_path)
    unfinished = tmp_path / "artifacts" / "synthesize" / "0123456789abcdef"
    write_jsonl(unfinished / "data.jsonl", ROWS)
    with pytest.raises(TreesynthError, match="not a finished synthesize artifact"):
        load_source(unfinished)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "summary.json").write_text(json.dumps({"artifacts": {"synthesize": str(tmp_path / "gone")}}))
    with pytest.raises(TreesynthError, match="is not here"):
        load_source(moved)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main([str(run_dir), "--to", "dir", str(busy)]) == 2
    assert (busy / "keep.txt").read_text() == "mine"
    assert main([str(run_dir), "--to", "dir", str(busy), "--overwrite"]) == 0
    assert not (busy / "keep.txt").exists() and (busy / "README.md").exists()
    assert main([str(run_dir), "--to", "hub"]) == 2
    assert main([str(run_dir), "--to", "dir"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--repo user/name" in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())


# ----------------------------------------------------------------------------------------------- hub
class FakeHfApi:
    """Records what the export asks of the hub and what the uploaded folder holds at upload time."""

    calls: list = []

    def __init__(self, endpoint=None, token=None, **kwargs):
        FakeHfApi.calls.append(("init", {"endpoint": endpoint, "token": token}))

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        FakeHfApi.calls.append(("upload_folder", {"repo_id": repo_id, "files": files, **kwargs}))
        return type("CommitInfo", (), {"oid": "abc123"})()


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # any HTTP answer: the hub is reachable
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    server = http.server.HTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.shutdown()
    server.server_close()


def test_hub_export_uploads_card_and_data_and_never_writes_the_token(run_dir, hub, tmp_path, capsys, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    caplog.set_level(logging.DEBUG)
    assert main([str(run_dir), "--to", "hub", "--repo", "someone/gsm8k-treesynth", "--private",
                 "--license", "apache-2.0"]) == 0
    names = [c[0] for c in FakeHfApi.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert FakeHfApi.calls[0][1] == {"endpoint": hub_url(hub), "token": TOKEN}  # from HF_TOKEN, given only here
    assert FakeHfApi.calls[1][1] == {"repo_id": "someone/gsm8k-treesynth", "repo_type": "dataset", "private": True,
                                     "exist_ok": True}
    upload = FakeHfApi.calls[2][1]
    assert upload["repo_id"] == "someone/gsm8k-treesynth" and upload["repo_type"] == "dataset"
    files = upload["files"]
    assert set(files) == {"README.md", "data/train-00000-of-00001.parquet", "tree.json", "tree.html", "tree.txt"}
    assert pq.read_table(pa.BufferReader(files["data/train-00000-of-00001.parquet"])).to_pylist() == ROWS
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and meta["treesynth"]["method"] == "treesynth"
    assert 'load_dataset("someone/gsm8k-treesynth", split="train")' in card

    artifact = _synthesize_dir(run_dir)
    (entry,) = read_exports(artifact)
    assert entry["repo"] == "someone/gsm8k-treesynth" and entry["private"] is True and entry["commit"] == "abc123"
    out = capsys.readouterr()
    assert "someone/gsm8k-treesynth" in out.out
    # The token is in no uploaded file, no file of the artifact or run, and no output or log line.
    assert not [n for n, b in files.items() if TOKEN.encode() in b]
    written = [p for root in (artifact, run_dir) for p in root.rglob("*") if p.is_file()]
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert TOKEN not in out.out + out.err + caplog.text


def hub_url(server) -> str:
    return f"http://127.0.0.1:{server.server_port}"


def test_unreachable_hub_is_one_line_before_any_upload(run_dir, hub, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert main([str(run_dir), "--to", "hub", "--repo", "someone/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err and "nothing was uploaded" in err
    assert FakeHfApi.calls == []
    assert not (_synthesize_dir(run_dir) / EXPORTS_FILE).exists()


def test_hub_needs_a_token_and_a_repo_id(run_dir, hub, monkeypatch, capsys):
    assert main([str(run_dir), "--to", "hub", "--repo", "not a repo"]) == 2
    monkeypatch.delenv("HF_TOKEN")
    assert main([str(run_dir), "--to", "hub", "--repo", "someone/x"]) == 2
    err = capsys.readouterr().err
    assert "not a hub id" in err and "set HF_TOKEN" in err
    assert FakeHfApi.calls == []


def test_report_links_each_row_to_its_dataset_and_export(run_dir, hub, tmp_path):
    import csv

    from treesynth.report import build_report

    assert main([str(run_dir), "--to", "hub", "--repo", "someone/gsm8k-treesynth"]) == 0
    artifact = _synthesize_dir(run_dir)
    md = build_report(tmp_path / "outputs", tmp_path / "report", tsne=False).read_text()
    section = md.split("## Datasets")[1].split("## Figures")[0]
    line = next(row for row in section.splitlines() if "TreeSynth" in row)
    assert f"`{artifact}`" in line
    assert f"[someone/gsm8k-treesynth]({hub_url(hub)}/datasets/someone/gsm8k-treesynth)" in line
    (row,) = [r for r in csv.DictReader((tmp_path / "report" / "table.csv").open()) if r["method"] == "treesynth"]
    assert row["datasets"] == str(artifact) and row["hub"] == "someone/gsm8k-treesynth"
