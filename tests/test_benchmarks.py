"""The benchmark registry (treesynth/benchmarks.py, conf/benchmark/): built-ins, a user's own benchmark by
one YAML file, lm-eval tasks by name; scoring (scripted lm-eval LMs: lm-eval's real task, data, filter and
metric code), decontamination, and the end-to-end checks on the embedded model (slow)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, REPO, compose_config
from lm_eval.api.model import LM
from test_eval_tasks import ScriptedLM, eval_cfg

from evaluation.harness import run_eval
from evaluation.plans import plan_benchmark
from treesynth import benchmarks
from treesynth.benchmarks import benchmark, builtin_names
from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl, write_jsonl
from treesynth.methods import hygiene

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"),
            ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("Egypt", "Cairo"), ("Cuba", "Havana"), ("Norway", "Oslo")]
USER_YAML = """\
display: Capitals
test:
  file: capitals.jsonl
question: q
answer: a
prompt: "What is the capital of {q}? Reply as 'Answer: <city>'."
extract: "regex:Answer:\\\\s*(?P<answer>[A-Za-z ]+)"
metric: exact_match
"""


def write_user_benchmark(folder: Path, name: str = "capitals", text: str = USER_YAML) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "capitals.jsonl", [{"q": c, "a": a} for c, a in CAPITALS])
    (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    folder = write_user_benchmark(tmp_path / "mine" / "benchmark")
    monkeypatch.setenv(benchmarks.PATH_ENV, str(folder))
    return folder


# ---------------------------------------------------------------- the registry


def test_builtins_in_report_order_and_complete(tmp_path):
    assert builtin_names() == ["gsm8k", "math", "mbpp", "humaneval", "simpletom"]
    for name in builtin_names():
        b = benchmark(name)
        assert b.kind == "builtin" and b.test_sources() and b.metric and b.display
        assert all(s.text_fields for s in b.test_sources())
        for style in b.spec["tasks"]:  # every task YAML the entry names exists
            assert plan_benchmark(name, style, "math500", None, tmp_path).tasks[0].include.is_file()


def test_no_module_keeps_its_own_list_of_benchmark_names():
    """Benchmark names appear as string constants only in the registry's YAML, tests and docs, not in code."""
    hits = []
    for f in [*REPO.glob("treesynth/**/*.py"), *REPO.glob("evaluation/**/*.py"), *REPO.glob("training/**/*.py"),
              REPO / "run.py"]:
        tree = ast.parse(f.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for name in builtin_names():
                    if node.value == name or (name != "math" and re.search(rf"\b{name}\b", node.value, re.I)):
                        hits.append(f"{f.relative_to(REPO)}:{node.lineno} {node.value[:60]!r}")
    assert not hits


def test_user_benchmark_entry(user_dir):
    b = benchmark("capitals")
    assert b.kind == "user" and b.metric == "exact_match" and b.display == "Capitals"
    assert b.final_answer("I think... Answer: Paris") == "paris"
    (src,) = b.test_sources()
    assert src.path == user_dir / "capitals.jsonl" and src.text_fields == ("q",)


@pytest.mark.parametrize(("text", "match"), [
    ("question: q\nanswer: a\nmetric: exact_match\n", "test needs a file"),
    ("test: {file: capitals.jsonl}\nmetric: f1\n", "metric must be one of"),
    ("test: {file: capitals.jsonl}\nextract: boxxed\n", "unknown answer extractor"),
    ("test: {file: capitals.jsonl}\nextract: 'regex:('\n", "capitals"),
    ("- not a mapping\n", "must be a mapping"),
])
def test_bad_user_benchmark_is_a_one_line_error(tmp_path, monkeypatch, text, match):
    monkeypatch.setenv(benchmarks.PATH_ENV, str(write_user_benchmark(tmp_path / "b", text=text)))
    with pytest.raises(TreesynthError, match=match) as e:
        benchmark("capitals")
    assert "\n" not in str(e.value)


def test_unknown_and_twice_defined_benchmarks(tmp_path, monkeypatch):
    with pytest.raises(TreesynthError, match="unknown benchmark 'gsm9k'"):
        benchmark("gsm9k")
    monkeypatch.setenv(benchmarks.PATH_ENV, str(write_user_benchmark(tmp_path / "b", name="gsm8k")))
    with pytest.raises(TreesynthError, match="defined twice"):
        benchmark("gsm8k")


# ---------------------------------------------------------------- a user benchmark, scored


def test_user_benchmark_scored_exact_match(user_dir, tmp_path):
    lm = ScriptedLM({"France": "Answer: Paris", "Japan": "Answer: Kyoto", "Italy": "So... Answer: rome",
                     "Peru": "Lima"})  # no `Answer:`: the regex finds nothing
    res = run_eval(eval_cfg(limit=None), ["capitals"], "scripted", None, None, tmp_path / "out", lm=lm)
    cap = res["benchmarks"]["capitals"]
    assert cap["n"] == 10 and cap["primary"] == "exact_match" and cap["settings"]["data"] == "local"
    assert cap["metrics"] == {"exact_match": pytest.approx(0.2)}  # Paris, rome (text normalisation)
    assert any("What is the capital of Japan?" in p for p in lm.prompts)
    samples = read_jsonl(tmp_path / "out" / "samples_capitals.jsonl")
    assert len(samples) == 10 and sum(s["exact_match"] for s in samples) == 2


def test_user_benchmark_numeric_with_tolerance_from_csv(tmp_path, monkeypatch):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "consts.csv").write_text("name,value\npi,3.14159\ne,2.71828\nsqrt2,1.41421\n")
    (folder / "consts.yaml").write_text("test: {file: consts.csv}\nquestion: name\nanswer: value\n"
                                        "prompt: 'Give {name} to three decimals.'\nextract: last_number\n"
                                        "metric: numeric\ntolerance: 0.001\n")
    monkeypatch.setenv(benchmarks.PATH_ENV, str(folder))
    lm = ScriptedLM({"Give pi": "about 3.1416", "Give e ": "it is 2.7", "sqrt2": "1.414"})
    res = run_eval(eval_cfg(limit=None), ["consts"], "scripted", None, None, tmp_path / "out", lm=lm)
    c = res["benchmarks"]["consts"]
    assert c["n"] == 3 and c["primary"] == "numeric_match" and c["metrics"]["numeric_match"] == pytest.approx(2 / 3)


def test_user_benchmark_from_the_hub(tmp_path, monkeypatch):
    import datasets

    asked, real = [], datasets.load_dataset

    def load_dataset(path, name=None, split=None, **kw):
        if path == "json":  # lm-eval reading the harness's local copy
            return real(path, name, split=split, **kw)
        asked.append((path, name, split))
        return [{"question": f"{c}?", "answer": a} for c, a in CAPITALS[:4]]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "caps.yaml").write_text("test: {hub: {path: my-org/caps, split: validation}}\n"
                                      "extract: 'regex:Answer: (\\w+)'\n")
    monkeypatch.setenv(benchmarks.PATH_ENV, str(folder))
    res = run_eval(eval_cfg(limit=None), ["caps"], "scripted", None, None, tmp_path / "out",
                   lm=ScriptedLM({"France?": "Answer: Paris", "Japan?": "Answer: Tokyo"}))
    assert asked == [("my-org/caps", None, "validation")]
    caps = res["benchmarks"]["caps"]
    assert caps["n"] == 4 and caps["settings"]["data"] == "hub" and caps["metrics"]["exact_match"] == 0.5


def test_user_benchmark_without_extractor_reads_the_tasks_answer_format(tmp_path, monkeypatch):
    folder = write_user_benchmark(tmp_path / "b", text="test: {file: capitals.jsonl}\nquestion: q\nanswer: a\n")
    monkeypatch.setenv(benchmarks.PATH_ENV, str(folder))
    lm = ScriptedLM({"France": "The capital is Paris.\nAnswer: Paris", "Japan": "Tokyo"})
    fmt = "Answer: (?P<answer>[A-Za-z .'-]+)"  # NEW_TASK's answer.format
    res = run_eval(eval_cfg(limit=None), ["capitals"], "scripted", None, None, tmp_path / "out", lm=lm,
                   answer_format=fmt)
    assert res["benchmarks"]["capitals"]["metrics"]["exact_match"] == pytest.approx(0.1)  # Tokyo: no `Answer:`
    res = run_eval(eval_cfg(limit=None), ["capitals"], "scripted", None, None, tmp_path / "whole", lm=lm)
    assert res["benchmarks"]["capitals"]["metrics"]["exact_match"] == pytest.approx(0.1)  # the whole response: Tokyo
    cfg = compose_config(["task.benchmarks=[capitals]"], tmp_path)
    from evaluation.stage import key_inputs

    assert key_inputs(cfg)["answer_format"] == cfg.task.answer.format  # part of the evaluation key


def test_user_benchmark_drives_verification(tmp_path, monkeypatch):
    import dataclasses

    from omegaconf import OmegaConf

    from treesynth.methods import verify
    from treesynth.profiles import load_profile
    from treesynth.tasks import load_task

    folder = write_user_benchmark(tmp_path / "b", text=USER_YAML + "verify: self_consistency\n")
    monkeypatch.setenv(benchmarks.PATH_ENV, str(folder))
    task = load_task(OmegaConf.load(CONF / "task" / "gsm8k.yaml"), load_profile("constrained"))
    task = dataclasses.replace(task, benchmarks=("capitals",))
    assert verify.kind_for(task, "auto") == "self_consistency"
    b = verify.verified_benchmark(task)
    assert verify.extract_answer("thinking... Answer: Paris", b) == "paris"


def test_user_benchmark_missing_field_is_a_user_error(tmp_path, monkeypatch):
    folder = write_user_benchmark(tmp_path / "b", text=USER_YAML.replace("question: q", "question: country"))
    monkeypatch.setenv(benchmarks.PATH_ENV, str(folder))
    with pytest.raises(TreesynthError, match="lacks field 'country'"):
        run_eval(eval_cfg(limit=None), ["capitals"], "scripted", None, None, tmp_path / "out", lm=ScriptedLM({}))


def test_user_benchmark_is_decontaminated_against(user_dir, tmp_path, monkeypatch):
    cfg = compose_config(["task.benchmarks=[capitals]", "data.hygiene.ngram=3"], tmp_path)
    recs = [{"id": "0", "prompt": "Tell me: Japan, what is its capital?"}, {"id": "1", "prompt": "Count the apples."}]
    kept, counts = hygiene.filter_records(recs, cfg)
    assert counts["decontam_benchmarks"] == ["capitals"] and counts["contaminated"] == 0  # questions are one word
    recs = [{"id": "0", "prompt": "Name the capital of France please"}]
    folder = write_user_benchmark(tmp_path / "b2", text=USER_YAML.replace("question: q", "question: q\ntext_fields: [q, a]"))
    write_jsonl(folder / "capitals.jsonl", [{"q": "the capital of France", "a": "Paris"}])
    monkeypatch.setenv(benchmarks.PATH_ENV, str(folder))
    kept, counts = hygiene.filter_records(recs, cfg)
    assert counts["contaminated"] == 1 and kept == []


def test_editing_a_user_benchmark_file_changes_the_synthesis_key(user_dir, tmp_path):
    # decontamination reads it: a stale dataset must not be reused after the benchmark's file changed
    from treesynth.pipeline import stage_key

    cfg = compose_config(["task.benchmarks=[capitals]"], tmp_path)
    before = stage_key(cfg, "synthesize")
    write_jsonl(user_dir / "capitals.jsonl", [{"q": "Peru", "a": "Lima"}])
    assert stage_key(cfg, "synthesize") != before
    assert stage_key(compose_config(["task.benchmarks=[capitals]", "data.hygiene.decontaminate=false"], tmp_path),
                     "synthesize") != before


# ---------------------------------------------------------------- lm-eval tasks by name


def arc_fixture(root: Path, n: int = 6) -> list[dict]:
    """ARC items in lm-eval's arc_easy schema (id, question, choices {text, label}, answerKey)."""
    rows = [{"id": f"q{i}", "question": f"Which of these numbers is the largest, in set {i}?",
             "choices": {"text": [str(i), str(i + 10), str(i + 1), str(i + 2)], "label": ["A", "B", "C", "D"]},
             "answerKey": "B" if i % 3 else "C"} for i in range(n)]
    write_jsonl(root / "arc_easy" / "test.jsonl", rows)
    return rows


class PrefersTwoDigits(LM):
    """A multiple-choice scorer: the longest-number continuation wins."""

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [(float(len(r.args[1].strip())), False) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):  # pragma: no cover
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):  # pragma: no cover
        raise NotImplementedError


def test_lm_eval_task_by_name_over_local_files(tmp_path):
    data = tmp_path / "data"
    arc_fixture(data)
    b = benchmark("arc_easy")
    assert b.kind == "lm_eval" and b.test_sources()[0].text_fields == ("question",)
    res = run_eval(eval_cfg(limit=None), ["arc_easy"], "scripted", None, str(data), tmp_path / "out",
                   lm=PrefersTwoDigits())
    arc = res["benchmarks"]["arc_easy"]
    assert arc["n"] == 6 and arc["settings"]["data"] == "local" and arc["primary"] == "acc"
    assert arc["metrics"]["acc"] == pytest.approx(4 / 6)  # B (two digits) is right in 4 of 6


def test_lm_eval_task_is_decontaminated_against_its_local_test_split(tmp_path):
    data = tmp_path / "data"
    rows = arc_fixture(data)
    cfg = compose_config(["task.benchmarks=[arc_easy]", f"data.dir={data}", "data.hygiene.ngram=5"], tmp_path)
    kept, counts = hygiene.filter_records([{"id": "0", "prompt": rows[2]["question"]},
                                           {"id": "1", "prompt": "Count the apples in the basket now."}], cfg)
    assert counts["decontam_benchmarks"] == ["arc_easy"] and [r["id"] for r in kept] == ["1"]


def test_lm_eval_group_by_name_plans_its_tasks(tmp_path):
    plan = plan_benchmark("bbh_cot_fewshot", "chat", None, None, tmp_path)
    assert plan.group == "ts_bbh_cot_fewshot" and len(plan.tasks) == 27 and plan.source == "hub"
    assert plan.group_metrics and plan.group_metrics[0]["metric"] == "exact_match"


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_user_benchmark_found_through_an_outside_config_dir(tmp_path, how):
    """run.py finds <DIR>/benchmark/<name>.yaml through Hydra's search path (here: decontamination uses it)."""
    conf = tmp_path / "mine"
    write_user_benchmark(conf / "benchmark")
    where = ["--config-dir", str(conf)] if how == "--config-dir" else [f"hydra.searchpath=[file://{conf}]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop(benchmarks.PATH_ENV, None)
    proc = subprocess.run([sys.executable, "run.py", *where, "task=gsm8k", "llm=scripted", "method=temperature",
                           "data.size=2", "task.benchmarks=[capitals]", "stages=[synthesize]",
                           f"paths.artifacts={tmp_path / 'art'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    synth = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]["synthesize"]
    assert synth["decontam_benchmarks"] == ["capitals"] and synth["decontam_ngrams"] == 10


def test_report_shows_a_user_benchmark_column_after_the_builtins(tmp_path):
    from treesynth import report

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    bench = {"gsm8k": {"metrics": {"exact_match": 0.25}, "n": 4, "primary": "exact_match"},
             "consts": {"metrics": {"numeric_match": 0.5}, "n": 10, "primary": "numeric_match"},
             "arc_easy": {"metrics": {"acc": 0.75, "acc_norm": 0.5}, "n": 6, "primary": "acc"}}
    (run / "summary.json").write_text(json.dumps({
        "config": {"method": {"name": "temperature"}, "model": {"name": "m"}, "llm": {"model": "g"},
                   "data": {"size": 2}, "task": {"name": "t", "human_size": None}, "eval": {"num_fewshot": None}},
        "stages": {"evaluate_base": {"benchmarks": bench}}, "artifacts": {}}))
    md = report.build_report(tmp_path / "runs", tmp_path / "out").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert header == "| method | GSM8K | arc_easy | consts | average |"
    assert "| zero-shot | 25.00 | 75.00 | 50.00 | 50.00 |" in md


def test_scaling_preset_composes_for_a_task_without_a_human_set():
    proc = subprocess.run([sys.executable, "run.py", "experiment=scaling", "task=simpletom", "--cfg", "job"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "benchmarks:\n  - simpletom" in proc.stdout or "- simpletom" in proc.stdout


# ---------------------------------------------------------------- embedded model (slow)

NEW_TASK = """\
name: capitals_quiz
description: The space of quiz questions about the capital city of a country.
sample: a question asking for the capital city of one country.
fields:
  question:
    description: the quiz question, naming the country
prompt: ["{question}"]
solution: |
  Answer the quiz question.

  {prompt}
answer:
  format: "Answer: (?P<answer>[A-Za-z .'-]+)"
  template: "Answer: {answer}"
  kind: expression
benchmarks: [capitals]
"""


@pytest.mark.slow
def test_outside_task_and_benchmark_chain_on_embedded_model(tmp_path):
    """A task YAML and a benchmark YAML, neither in the repo, through run.py --config-dir: synthesize, train,
    evaluate on the embedded model, then the report shows the benchmark's column."""
    conf = tmp_path / "myconf"
    write_user_benchmark(conf / "benchmark")
    (conf / "task").mkdir()
    (conf / "task" / "capitals_quiz.yaml").write_text(NEW_TASK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop(benchmarks.PATH_ENV, None)
    cmd = [sys.executable, "run.py", "--config-dir", str(conf), "task=capitals_quiz", "method=temperature",
           "llm=embedded", "data.size=2", "train.max_steps=2", "eval.limit=null", "eval.max_gen_toks=8",
           f"paths.artifacts={tmp_path / 'artifacts'}", f"hydra.run.dir={tmp_path / 'run'}",
           "stages=[synthesize,train,evaluate_base,evaluate]"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for stage in ("evaluate_base", "evaluate"):
        cap = summary["stages"][stage]["benchmarks"]["capitals"]
        assert cap["n"] == 10 and set(cap["metrics"]) == {"exact_match"} and cap["primary"] == "exact_match"
    assert summary["stages"]["synthesize"]["records"] == 2 if "records" in summary["stages"]["synthesize"] else True
    from treesynth import report

    assert report.main([str(tmp_path / "run"), "--name", "cap", "--results", str(tmp_path / "results"),
                        "--no-tsne"]) == 0
    table = (tmp_path / "results" / "cap" / "report.md").read_text()
    assert "capitals" in table


@pytest.mark.slow
def test_lm_eval_task_by_name_equals_the_lm_eval_cli(tmp_path):
    """arc_easy by name over a local fixture in lm-eval's schema: our score equals lm_eval's CLI on the same items."""
    from omegaconf import OmegaConf

    from treesynth.models import resolve_model_path

    data = tmp_path / "data"
    arc_fixture(data, n=6)
    model = resolve_model_path("embedded")
    cfg = OmegaConf.load(CONF / "eval" / "default.yaml")
    cfg.merge_with({"limit": 6, "apply_chat_template": False, "runtime": {"batch_size": 6}})
    ours = run_eval(cfg, ["arc_easy"], model, None, str(data), tmp_path / "ours")["benchmarks"]["arc_easy"]

    tasks = tmp_path / "cli_tasks"  # lm-eval's own arc_easy, only the data source changed (written here)
    tasks.mkdir()
    (tasks / "arc_local.yaml").write_text(
        f"include: {benchmarks.lm_eval_yaml('arc_easy')}\ntask: arc_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'arc_easy' / 'test.jsonl'}\n"
        "training_split: null\nvalidation_split: null\n")
    cli = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
           "--device", "cpu", "--tasks", "arc_local", "--include_path", str(tasks), "--limit", "6",
           "--batch_size", "6", "--output_path", str(tmp_path / "cli_out")]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "cli_out").rglob("results_*.json")).read_text())
    assert theirs["n-samples"]["arc_local"]["effective"] == ours["n"] == 6
    assert ours["metrics"]["acc"] == pytest.approx(theirs["results"]["arc_local"]["acc,none"])
    assert ours["metrics"]["acc_norm"] == pytest.approx(theirs["results"]["arc_local"]["acc_norm,none"])
