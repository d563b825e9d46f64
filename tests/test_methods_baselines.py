"""Baseline synthesizers (temperature, evol_instruct, persona_hub, human): every method behind the same
registry produces exactly data.size records with prompt/completion/meta in the task's answer format, on
the scripted backend and against a loopback OpenAI-compatible server for every task, and (slow) on the
embedded SmolLM2. Plus the pieces with logic of their own: Evol-Instruct's elimination filter,
the human-data conversion, persona sources and resume."""

from __future__ import annotations

import dataclasses
import json
import re

import pyarrow.parquet as pq
import pytest
from conftest import CONF, REPO, compose_config
from omegaconf import OmegaConf

from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl
from treesynth.methods.evol_instruct import elimination_reason
from treesynth.methods.human import convert, converter_for
from treesynth.pipeline import run_stage, stage_dir
from treesynth.profiles import load_profile
from treesynth.tasks import load_task, task_of
from treesynth.testing.scripted import ScriptedBackend

FIX = REPO / "tests" / "fixtures"
CODE_ALPACA = f"method.file={FIX / 'code_alpaca.jsonl'}"


def _run(tmp_path, *overrides: str) -> tuple[list[dict], dict, object]:
    cfg = compose_config(["stages=[synthesize]", *overrides], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    out = stage_dir(cfg, "synthesize")
    rows = read_jsonl(out / "data.jsonl")
    task = task_of(cfg)
    assert len(rows) == int(cfg.data.size) == metrics["records"] == pq.read_table(out / "data.parquet").num_rows
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "task", "method", "prompt", "completion", "meta"}
        assert r["task"] == task.name and r["method"] == cfg.method.name and r["prompt"].strip()
        assert task.ends_in_answer_format(r["completion"]), r["completion"]
        assert r["meta"]["seed"] == cfg.seed
    return rows, metrics, out


EVERY_METHOD_AND_TASK = [
    ("temperature", "gsm8k", []), ("temperature", "math", []), ("temperature", "code_alpaca", []),
    ("temperature", "simpletom", []),
    ("evol_instruct", "gsm8k", []), ("evol_instruct", "math", []), ("evol_instruct", "code_alpaca", [f"method.seed_file={FIX / 'code_alpaca.jsonl'}"]),
    ("evol_instruct", "simpletom", []),
    ("persona_hub", "gsm8k", []), ("persona_hub", "math", []), ("persona_hub", "code_alpaca", []), ("persona_hub", "simpletom", []),
    ("human", "gsm8k", []), ("human", "math", []), ("human", "code_alpaca", [CODE_ALPACA]),
]


@pytest.mark.parametrize(("method", "task", "extra"), EVERY_METHOD_AND_TASK)
def test_every_method_on_every_task_scripted(tmp_path, method, task, extra):
    rows, metrics, _ = _run(tmp_path, "llm=scripted", f"method={method}", f"task={task}", "data.size=4", *extra)
    if method == "human":
        assert metrics["teacher_attempts"] == 0 and all(r["id"].startswith("human/") for r in rows)
    if method == "evol_instruct":
        assert metrics["evol_seed_source"] == ("temperature" if task == "simpletom" else "human")
        assert all(r["meta"]["operations"] for r in rows)
    if method == "persona_hub":  # hub unreachable, no file: the LLM-written pool, and it says so
        assert metrics["persona_source"] == "llm" and all(r["meta"]["persona"] for r in rows)


def test_temperature_calls_have_independent_seeds_and_resume(tmp_path):
    rows, metrics, out = _run(tmp_path, "llm=scripted", "method=temperature", "method.samples_per_call=2",
                              "method.temperature=0.9", "data.size=6")
    calls = read_jsonl(out / "calls.jsonl")
    assert len(calls) == 3 and len({c["seed"] for c in calls}) == 3 and {c["temperature"] for c in calls} == {0.9}
    assert [r["id"] for r in rows] == ["0/0", "0/1", "1/0", "1/1", "2/0", "2/1"]
    # A rerun with the artifact gone but the checkpoints kept makes no new generation calls.
    (out / "stage.json").unlink()
    cfg = compose_config(["stages=[synthesize]", "llm=scripted", "method=temperature", "method.samples_per_call=2",
                          "method.temperature=0.9", "data.size=6"], tmp_path)
    again = run_stage(cfg, "synthesize")
    assert again["llm"]["calls"] == 0 and read_jsonl(out / "data.jsonl") == rows


def task(name: str):
    return load_task(OmegaConf.load(CONF / "task" / f"{name}.yaml"), load_profile("constrained"))


def _convert(name: str, row: dict) -> str | None:
    t = task(name)
    return convert(t, row, converter_for(t))  # the converter its benchmark's registry entry names


def test_human_conversion_into_answer_formats():
    gsm = _convert("gsm8k", {"answer": "5*2=<<5*2=10>>10 dollars.\n#### 1,010"})
    assert gsm == "5*2=10 dollars.\n#### 1010"
    math = _convert("math", {"solution": "So $x=\\boxed{\\frac{1}{2}}$ works, as checked."})
    assert math.endswith("The final answer is $\\boxed{\\frac{1}{2}}$.") and math.startswith("So $x=")
    assert _convert("math", {"solution": "no box"}) is None
    code = _convert("code_alpaca", {"output": "```python\ndef f():\n    return 1\n```"})
    assert code == "```python\ndef f():\n    return 1\n```"
    assert _convert("code_alpaca", {"output": "def g(x):\n    return x"}) == "```python\ndef g(x):\n    return x\n```"


def test_human_completion_template_is_the_text_converted():
    """task.human.completion names the row's text the converter reads (it used to be ignored for gsm8k)."""
    t = task("gsm8k")
    t = dataclasses.replace(t, human={**t.human, "completion": "{worked}"})
    assert convert(t, {"answer": "ignored", "worked": "2+2=4\n#### 4"}, converter_for(t)) == "2+2=4\n#### 4"
    assert convert(t, {"answer": "1+1=2\n#### 2"}, converter_for(t)) is None


def test_human_subsample_is_seeded_and_simpletom_has_none(tmp_path):
    a, _, _ = _run(tmp_path / "a", "llm=scripted", "method=human", "data.size=3", "seed=1")
    b, _, _ = _run(tmp_path / "b", "llm=scripted", "method=human", "data.size=3", "seed=2")
    assert [r["id"] for r in a] != [r["id"] for r in b]
    assert all("<<" not in r["completion"] for r in a + b)
    with pytest.raises(TreesynthError, match="no real training set"):
        _run(tmp_path / "c", "llm=scripted", "method=human", "task=simpletom", "data.size=2")
    with pytest.raises(TreesynthError, match="only 4 rows"):
        _run(tmp_path / "d", "llm=scripted", "method=human", "task=code_alpaca", CODE_ALPACA, "data.size=5")


def test_elimination_reasons():
    seed = "A shop sells 12 pencils a day for 5 days. How many pencils does it sell?"
    assert elimination_reason(seed, seed) == "copy"
    assert elimination_reason(seed.replace("5 days", "5 days.") + " ", seed) == "copy"
    assert elimination_reason("Sorry, I cannot rewrite this prompt for you today.", seed) == "apology"
    assert elimination_reason("Here is the rewritten prompt: a shop sells pens for 3 weeks.", seed) == "prompt_leak"
    assert elimination_reason("A shop sells 12 pencils a day for 5 days, but 3 break each day. How many are sold?",
                              seed) is None


def test_failed_evolutions_are_eliminated(tmp_path, monkeypatch):
    # Every add_constraints evolution fails: a copy of its parent (odd request seeds) or an apology;
    # concretize evolutions succeed. Positions whose rounds all failed give no record and are refilled.
    def evolver(request):
        prompt = request.messages[-1][1]
        if (request.json_schema or {}).get("title") != "samples" or "Given Prompt#:" not in prompt:
            return None
        given = prompt.split("Given Prompt#:\n")[1].split("\n\nWrite the")[0]
        if "add one more constraint" in prompt:
            text = given if request.seed % 2 else "Sorry, as an AI I cannot make this harder for you."
        else:
            text = f"Concretely: {request.seed % 89 + 3} crates of pears weigh {request.seed % 7 + 2} kg each. Total kg?"
        return json.dumps({"samples": [{"question": text[:120]}]})

    orig = ScriptedBackend.default_response
    monkeypatch.setattr(ScriptedBackend, "default_response", lambda self, req: evolver(req) or orig(self, req))
    rows, metrics, out = _run(tmp_path, "llm=scripted", "method=evol_instruct", f"method.seed_file={SEED_FILE}",
                              "method.rounds=2", "method.operations=[add_constraints,concretize]",
                              f"data.dir={FIX / 'benchdata'}", "data.size=6")
    eliminated = metrics["evolutions_eliminated"]
    assert eliminated["copy"] >= 1 and eliminated["apology"] >= 1 and set(eliminated) == {"copy", "apology"}
    assert metrics["positions_without_evolution"] >= 1 and metrics["prompts_generated"] > 6
    for r in rows:
        assert r["prompt"] not in SEEDS and not re.search(r"sorry|unable", r["prompt"], re.I)
        assert r["meta"]["seed_prompt"] in SEEDS and set(r["meta"]["operations"]) == {"concretize"}
    for row in read_jsonl(out / "evol.jsonl"):
        for rnd in row["rounds"]:
            assert (rnd["eliminated"] is None) == (rnd["operation"] == "concretize")


SEED_FILE = FIX / "benchdata" / "gsm8k" / "train.jsonl"
SEEDS = {json.loads(line)["question"] for line in SEED_FILE.read_text().splitlines()}


def test_persona_file_source_is_used_and_recorded(tmp_path):
    personas = tmp_path / "personas.txt"
    personas.write_text("a retired railway engineer who builds model trains\na beekeeper in rural Wales\n")
    rows, metrics, out = _run(tmp_path, "llm=scripted", "method=persona_hub", f"method.persona_file={personas}",
                              "data.size=4")
    assert metrics["persona_source"] == "file"
    assert {r["meta"]["persona"] for r in rows} == set(personas.read_text().splitlines())
    assert json.loads((out / "personas.json").read_text())["source"] == "file"


EMBEDDED = ["llm=embedded", "data.size=1"]  # each call is slow on 2 shared cores


# One task per LLM-driven method, so together they cover every task's schema and answer format on the real
# model (gsm8k is also covered by test_e2e_chain); the human set makes no LLM calls.
@pytest.mark.slow
@pytest.mark.parametrize(("method", "task", "extra"), [
    ("temperature", "simpletom", []),
    ("evol_instruct", "math", ["method.rounds=1", "method.seed_pool=1"]),
    ("persona_hub", "code_alpaca", ["method.pool_size=1"]),
    ("human", "gsm8k", []),
])
def test_baseline_on_embedded_model(tmp_path, method, task, extra):
    rows, metrics, _ = _run(tmp_path, *EMBEDDED, f"method={method}", f"task={task}", *extra)
    assert all(r["meta"]["generator"] == "smollm2-135m-instruct" for r in rows)
    if method != "human":
        assert metrics["llm"]["calls"] > 0


# ------------------------------------------------------------------------------------- hub sources
# The Hugging Face hub is unreachable here; on a user's machine it is the default source. These tests put a
# fake `datasets.load_dataset` in its place that serves rows in each hub dataset's own schema, so what is
# checked is our side: which dataset, config and split we ask for, and how its rows are converted.
# EleutherAI/hendrycks_math has one config per subject and none by default.
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
HUB_ROWS = {
    ("proj-persona/PersonaHub", "persona", "train"): [{"persona": f"A retired {job} who teaches evening classes"}
                                                      for job in ("baker", "sailor", "surveyor", "pharmacist")],
    ("sahil2801/CodeAlpaca-20k", None, "train"): [
        {"instruction": "Write a function that returns the square of a number.", "input": "",
         "output": "def square(x):\n    return x * x"},
        {"instruction": "Reverse the given string.", "input": "s = 'abc'", "output": "s[::-1]"},
    ],
    ("openai/gsm8k", "main", "train"): [
        {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
         "answer": "He has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
        {"question": "A box holds 4 pens. How many pens are in 3 boxes?", "answer": "3 * 4 = <<3*4=12>>12\n#### 12"},
    ],
    **{("EleutherAI/hendrycks_math", subject, "train"): [
        {"problem": f"A {subject} problem: what is $1+{i}$?", "solution": f"It is $\\boxed{{{1 + i}}}$.",
         "level": "Level 1", "type": subject}] for i, subject in enumerate(MATH_SUBJECTS)},
}
# Datasets made of one config per part: asking without a config name fails, as the real hub does.
CONFIG_REQUIRED = {"EleutherAI/hendrycks_math", "allenai/SimpleToM"}


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    asked: list[tuple] = []

    def load_dataset(path, name=None, split=None, **kw):
        asked.append((path, name, split))
        if path in CONFIG_REQUIRED and name is None:
            raise ValueError(f"Config name is missing. Please pick one among the available configs for {path}")
        if (path, name, split) not in HUB_ROWS:
            raise ConnectionError(f"{path} is not served by this fake hub")
        return list(HUB_ROWS[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("TREESYNTH_DATA_DIR", raising=False)
    return asked


def test_persona_hub_personas_from_the_hub(tmp_path, fake_hub):
    rows, metrics, _ = _run(tmp_path, "llm=scripted", "method=persona_hub", "task=gsm8k", "data.dir=null", "data.size=4")
    assert ("proj-persona/PersonaHub", "persona", "train") in fake_hub
    assert metrics["persona_source"] == "hub"
    hub_personas = {r["persona"] for r in HUB_ROWS[("proj-persona/PersonaHub", "persona", "train")]}
    assert {r["meta"]["persona"] for r in rows} <= hub_personas


@pytest.mark.parametrize(("task", "hub_id"), [("code_alpaca", ("sahil2801/CodeAlpaca-20k", None, "train")),
                                              ("gsm8k", ("openai/gsm8k", "main", "train"))])
def test_human_training_set_from_the_hub(tmp_path, fake_hub, task, hub_id):
    rows, metrics, _ = _run(tmp_path, "llm=scripted", "method=human", f"task={task}", "data.dir=null", "data.size=2")
    assert hub_id in fake_hub and metrics["teacher_attempts"] == 0
    questions = {r.get("question") or r["instruction"] for r in HUB_ROWS[hub_id]}
    assert all(any(q in r["prompt"] for q in questions) for r in rows)
    if task == "gsm8k":  # calculator annotations stripped, answer line kept
        assert all("<<" not in r["completion"] for r in rows)


def test_human_math_from_the_hub_asks_for_every_subject_config(tmp_path, fake_hub):
    rows, metrics, _ = _run(tmp_path, "llm=scripted", "method=human", "task=math", "data.dir=null", "data.size=7")
    asked = [(name, split) for path, name, split in fake_hub if path == "EleutherAI/hendrycks_math"]
    assert {name for name, split in asked if split == "train"} == set(MATH_SUBJECTS)
    assert all(name is not None for name, _ in asked)  # decontamination's test-split requests too
    assert len(rows) == 7 and all(r["completion"].endswith("$.") for r in rows)


def test_a_refused_hub_request_is_not_blamed_on_the_network(fake_hub):
    from treesynth.datasets import DataUnavailable, Source, load_source

    src = Source("math/human", None, {"path": "EleutherAI/hendrycks_math", "split": "train"})  # no config
    with pytest.raises(DataUnavailable, match="refused the request.*Config name is missing") as e:
        load_source(src)
    assert "unreachable" not in str(e.value)


def test_an_unreachable_hub_dataset_is_tried_once_per_process(fake_hub):
    from treesynth.datasets import DataUnavailable, Source, load_source

    src = Source("nowhere/test", None, {"path": "nowhere/dataset", "split": "test"})
    for _ in range(2):
        with pytest.raises(DataUnavailable, match="nowhere/dataset unreachable"):
            load_source(src)
    assert fake_hub.count(("nowhere/dataset", None, "test")) == 1
