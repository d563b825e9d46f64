"""Cross-run report (treesynth/report/), the paper's CSVs, the experiment presets and launcher configs.
No model runs: the report reads fixture summary.json files (tests/fixtures/summaries/)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, REPO
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from treesynth import report
from treesynth.errors import TreesynthError

FIXTURES = Path(__file__).parent / "fixtures" / "summaries"
L, Q = "llama3_1_8b", "qwen2_5_7b"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results") / "fx"
    assert report.main([str(FIXTURES), "--name", "fx", "--results", str(out.parent), "--no-tsne",
                        "--note", "Fixture runs.\nNot the paper's setting."]) == 0
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _row(rows: list[dict[str, str]], model: str, size: str, method: str) -> dict[str, str]:
    (hit,) = [r for r in rows if (r["generator"], r["model"], r["size"], r["method"]) == ("gpt-4o", model, size, method)]
    return hit


# ------------------------------------------------------------------------------------------- headline metric
@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"metrics": {"exact_match,flexible-extract": 0.6, "exact_match,strict-match": 0.5,
                      "exact_match_stderr,strict-match": 0.01}}, ("exact_match,strict-match", 0.5)),
        ({"metrics": {"exact_match,flexible-extract": 0.6, "exact_match,strict-match": 0.5}, "primary": "exact_match,flexible-extract"},
         ("exact_match,flexible-extract", 0.6)),
        ({"metrics": {"exact_match,none": 0.3, "math_verify,none": 0.4}}, ("exact_match,none", 0.3)),
        ({"metrics": {"pass_at_1,none": 0.41}}, ("pass_at_1,none", 0.41)),
        ({"metrics": {"pass@1,create_test": 0.2, "pass@1_stderr,create_test": 0.03}}, ("pass@1,create_test", 0.2)),
        ({"metrics": {"acc_norm": 0.7, "acc": 0.6}}, ("acc", 0.6)),
        ({"metrics": {"acc": 0.6, "exact_match": 0.9}, "primary": "acc"}, ("acc", 0.6)),
        # evaluation/harness.py's flattened names: "metric_filter", filter `none` dropped, "sub/metric"
        ({"metrics": {"exact_match_flexible_extract": 0.6, "exact_match_strict_match": 0.5}}, ("exact_match_strict_match", 0.5)),
        ({"metrics": {"algebra/exact_match": 0.2, "exact_match": 0.3}}, ("exact_match", 0.3)),
        ({"metrics": {"algebra/exact_match": 0.2}}, ("algebra/exact_match", 0.2)),
        ({"metrics": {"bleu": 3.0}}, None),
        ({"metrics": {}}, None),
    ],
)
def test_headline_metric(result: dict, expected: tuple | None) -> None:
    assert report.headline_metric(result) == expected


def test_percent_only_for_fractions() -> None:
    assert report.as_percent(0.4526) == pytest.approx(45.26)
    assert report.as_percent(45.26) == 45.26


# ------------------------------------------------------------------------------------------- the report
def test_table_cells(built: Path) -> None:
    rows = _csv(built / "table.csv")
    ts = _row(rows, L, "human", "treesynth")
    assert float(ts["gsm8k"]) == pytest.approx(65.0)  # seeds 0.60 and 0.70: mean
    assert float(ts["mbpp"]) == pytest.approx(50.8) and float(ts["humaneval"]) == pytest.approx(50.0)
    assert float(ts["average"]) == pytest.approx((65.0 + 50.8 + 50.0) / 3)
    assert float(ts["diversity gsm8k"]) == pytest.approx(0.36)
    assert float(ts["diversity code_alpaca"]) == pytest.approx(0.19)
    # lm-eval names without "primary": strict-match wins over flexible-extract (0.55)
    assert float(_row(rows, L, "human", "temperature")["gsm8k"]) == pytest.approx(50.0)
    # vanilla's "primary" names flexible-extract
    assert float(_row(rows, L, "human", "human")["gsm8k"]) == pytest.approx(58.0)
    zero = _row(rows, L, "human", "zero_shot")
    assert [float(zero[b]) for b in ("gsm8k", "mbpp", "humaneval")] == pytest.approx([5.0, 19.8, 15.85])
    assert float(_row(rows, L, "human", "few_shot")["gsm8k"]) == pytest.approx(40.0)
    assert float(_row(rows, Q, "human", "treesynth")["gsm8k"]) == pytest.approx(86.0)
    # scaling points are their own groups; zero-shot (size-independent) is shown there too
    assert float(_row(rows, L, "1000", "treesynth")["gsm8k"]) == pytest.approx(64.0)
    assert float(_row(rows, L, "10000", "zero_shot")["gsm8k"]) == pytest.approx(5.0)


def test_missing_cells_are_dashes_never_zero(built: Path) -> None:
    rows = _csv(built / "table.csv")
    persona = _row(rows, L, "human", "persona_hub")  # its training never finished
    assert persona["gsm8k"] == "" and persona["average"] == "" and float(persona["diversity gsm8k"]) == pytest.approx(0.33)
    temperature = _row(rows, L, "human", "temperature")  # no code run: no average over a partial row
    assert temperature["mbpp"] == "" and temperature["average"] == ""
    md = (built / "report.md").read_text()
    assert "| Persona Hub | - | - | - | - | 0.330 | - |" in md
    assert "| few-shot | 40.00 | - | - | - | - | - |" in md
    assert " 0.00 |" not in md.split("## Side by side")[0]


def test_seed_mean_and_n(built: Path) -> None:
    cells = {(r["model"], r["size"], r["method"], r["column"]): r for r in _csv(built / "cells.csv")}
    ts = cells[(L, "human", "treesynth", "gsm8k")]
    assert (float(ts["mean"]), float(ts["std"]), int(ts["n"])) == (pytest.approx(65.0), pytest.approx(5.0), 2)
    # every run of a model reuses one evaluate_base artifact: counted once, not eight times
    assert int(cells[(L, "human", "zero_shot", "gsm8k")]["n"]) == 1
    assert int(cells[(L, "human", "treesynth", "diversity gsm8k")]["n"]) == 2
    md = (built / "report.md").read_text()
    assert "| TreeSynth | 65.00 (n=2) | 50.80 | 50.00 | 55.27 | 0.360 (n=2) | 0.190 |" in md


def test_side_by_side_with_paper(built: Path) -> None:
    cmp = {(r["model"], r["size"], r["method"], r["column"]): r for r in _csv(built / "paper_comparison.csv")}
    ts = cmp[(L, "human", "treesynth", "gsm8k")]
    assert (float(ts["ours"]), float(ts["paper"]), float(ts["ours_minus_paper"])) == pytest.approx((65.0, 66.72, -1.72))
    assert float(cmp[(L, "-", "zero_shot", "gsm8k")]["paper"]) == pytest.approx(4.85)
    assert float(cmp[(L, "1000", "treesynth", "gsm8k")]["paper"]) == pytest.approx(64.3)  # scaling.csv
    assert float(cmp[("-", "human", "treesynth", "diversity gsm8k")]["paper"]) == pytest.approx(0.35)
    assert cmp[(L, "human", "persona_hub", "gsm8k")]["ours"] == ""  # paper-only cell kept in the CSV


def test_plots_and_skipped_runs(built: Path) -> None:
    for name in ("scaling_accuracy_gpt-4o_llama3_1_8b.png", "scaling_diversity_gpt-4o.png"):
        data = (built / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(built.glob("scaling_accuracy_*qwen*"))  # one size only: no curve
    md = (built / "report.md").read_text()
    assert "crashed/summary.json" in md and "t-SNE skipped" in md
    assert md.splitlines()[2:4] == ["> Fixture runs.", "> Not the paper's setting."]  # --note, under the title


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TreesynthError, match="not a directory"):
        report.load_runs(tmp_path / "nope")
    with pytest.raises(TreesynthError, match="no summary.json"):
        report.load_runs(tmp_path)
    assert report.main([str(tmp_path), "--results", str(tmp_path / "r")]) == 2


def test_paper_csvs_transcribed() -> None:
    paper = report.Paper.load(report.PAPER_DIR)
    assert len(paper.accuracy) == 144 and len(paper.diversity) == 39 and len(paper.scaling) == 33
    assert paper.accuracy[("qwen2.5-72b-instruct", Q, "evol_instruct", "math")] == 67.56
    assert paper.accuracy[("", L, "human", "average")] == 41.93
    assert paper.diversity[("llama-3.3-70b-instruct", "persona_hub", "math")] == 0.34
    assert paper.scaling[("gpt-4o", Q, "treesynth", "humaneval", 100000)] == 83.0
    # the paper's own averages agree with its cells (catches transcription slips)
    for (gen, model, method, bench), value in paper.accuracy.items():
        if bench == "average":
            cells = [paper.accuracy[(gen, model, method, b)] for b in ("gsm8k", "math", "mbpp", "humaneval")]
            assert sum(cells) / 4 == pytest.approx(value, abs=0.02), (gen, model, method)


# ------------------------------------------------------------------------------------------- presets
def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=["wandb.mode=disabled", *overrides], return_hydra_config=True)


def _jobs(cfg) -> list[list[str]]:
    """The job override lists hydra's basic sweeper expands the preset's sweeper params into."""
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


ALL_STAGES = ["synthesize", "diversity", "train", "evaluate_base", "evaluate"]
METHODS = ["treesynth", "temperature", "evol_instruct", "persona_hub", "human"]


def test_presets(make_cfg) -> None:
    default, smoke = make_cfg(), make_cfg("experiment=smoke")
    assert smoke.data.size == default.data.size == 24 and list(smoke.stages) == list(default.stages) == ALL_STAGES
    assert smoke.llm.backend == "embedded" and smoke.model.name == "smollm2_135m"

    main = _compose("experiment=paper_main", "task=gsm8k")
    assert main.data.size == 7473 and list(main.stages) == ALL_STAGES
    jobs = _jobs(main)
    assert len(jobs) == 10
    assert {(j[0].split("=")[1], j[1].split("=")[1]) for j in jobs} == {(m, x) for m in METHODS for x in (L, Q)}

    scaling = _compose("experiment=scaling", "task=gsm8k")
    assert [j for (j,) in _jobs(scaling)] == [f"data.size={n}" for n in (1000, 7473, 10000, 100000)]
    assert scaling.method.name == "treesynth"

    div = _compose("experiment=diversity_only", "task=gsm8k")
    assert list(div.stages) == ["synthesize", "diversity"] and [j for (j,) in _jobs(div)] == [f"method={m}" for m in METHODS]


def test_launcher_configs() -> None:
    slurm = _compose("hydra/launcher=slurm_gpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == 1 and slurm.mem_gb == 64
    assert slurm.timeout_min == 720 and slurm.max_num_timeout == 3
    local = _compose("hydra/launcher=local_gpu").hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.gpus_per_node == 1


def test_sweep_expands_through_hydra(tmp_path: Path) -> None:
    """`-m experiment=scaling` really launches the four sizes (interpolated human size included), and a
    command-line value replaces the preset's sweep."""
    app = tmp_path / "app.py"
    app.write_text(
        "import hydra\n"
        f"@hydra.main(version_base='1.3', config_path={str(CONF)!r}, config_name='config')\n"
        "def main(cfg):\n    print('JOB', cfg.method.name, cfg.data.size, flush=True)\n"
        "main()\n"
    )

    def sizes(*args: str) -> list[str]:
        proc = subprocess.run([sys.executable, str(app), "-m", "experiment=scaling", "task=gsm8k",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("JOB")]

    assert sizes() == ["1000", "7473", "10000", "100000"]
    assert sizes("data.size=30,40") == ["30", "40"]


@pytest.mark.slow
def test_tsne_from_run_data(tmp_path: Path) -> None:
    """Real embeddings (all-MiniLM-L6-v2) of two methods' data.jsonl and vanilla's -> one t-SNE PNG."""
    import json

    topics = ["apples", "trains", "money", "paint", "ships", "clocks", "bread", "stamps", "fences", "rivers"]
    for method in ("treesynth", "temperature", "human"):
        data = tmp_path / "artifacts" / "synthesize" / method
        data.mkdir(parents=True)
        rows = [{"id": i, "prompt": f"{method} question {i}: how many {t} are left after {i} are used?",
                 "completion": f"#### {i}"} for i, t in enumerate(topics * 2)]
        (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"config": {"task": {"name": "gsm8k"}, "method": {"name": method}, "llm": {"model": "org/Gen-7B"},
                              "model": {"name": "smollm2_135m"}, "data": {"size": 20},
                              "paths": {"artifacts": str(tmp_path / "artifacts")}},
                   "stages": {"synthesize": {"records": 20}}, "artifacts": {"synthesize": str(data)}}
        (tmp_path / "runs" / method).mkdir(parents=True)
        (tmp_path / "runs" / method / "summary.json").write_text(json.dumps(summary))
    md = report.build_report(tmp_path / "runs", tmp_path / "out").read_text()
    png = tmp_path / "out" / "tsne_gen-7b_gsm8k.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "![tsne_gen-7b_gsm8k]" in md
    assert len(list((tmp_path / "artifacts" / ".cache" / "embeddings").glob("*.f16.npy"))) == 3  # cached for the next report
