"""Task specs: every conf/task file loads, builds prompts and completions in its answer format."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import CONF, compose_config

from treesynth.errors import TreesynthError
from treesynth.llm import Completion
from treesynth.profiles import load_profile
from treesynth.tasks import load_task, task_of

TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))


def task(name, tmp_path, *overrides):
    """The task under the embedded default (constrained profile) unless overrides pick another LLM."""
    return task_of(compose_config([f"task={name}", *overrides], tmp_path))


def test_all_four_tasks_exist():
    assert {"gsm8k", "math", "code_alpaca", "simpletom"} <= set(TASKS)


@pytest.mark.parametrize(
    "name,response,ending",
    [
        ("gsm8k", {"reasoning": "She has 3 + 4 = 7 apples.", "answer": "7"}, "\n#### 7"),
        ("math", {"reasoning": "Add the two numbers.", "answer": "x^2+1"}, "$\\boxed{x^2+1}$."),
        ("code_alpaca", {"code": "def f(x):\n    return x + 1"}, "```python\ndef f(x):\n    return x + 1\n```"),
        ("simpletom", {"reasoning": "Mary does not know the milk is spoiled.", "answer": "B"}, "\nAnswer: B"),
    ],
)
def test_structured_completion_ends_in_answer_format(name, response, ending, tmp_path):
    t = task(name, tmp_path)
    sample = {f.name: "B" if f.name == "key" else f"some {f.name} text here" for f in t.fields}
    schema = t.response_schema(sample)
    jsonschema.validate(response, schema)
    completion = t.completion_from(Completion(text=json.dumps(response), data=response))
    assert completion is not None and completion.endswith(ending)
    assert t.ends_in_answer_format(completion)
    assert t.benchmarks  # the evaluation reads cfg.task.benchmarks


def test_answer_format_rejects_other_endings(tmp_path):
    gsm = task("gsm8k", tmp_path)
    assert gsm.ends_in_answer_format("so 3 apples\n#### 3")
    assert not gsm.ends_in_answer_format("#### 3 apples")
    assert gsm.completion_from(Completion(text="x", data=None)) is None
    assert gsm.completion_from(Completion(text="", finish_reason="length", data={"reasoning": "a", "answer": "1"})) is None


def test_prompt_parts_and_pinned_answer(tmp_path):
    code = task("code_alpaca", tmp_path)
    assert code.build_prompt({"instruction": "Reverse a list.", "input": ""}) == "Reverse a list."
    assert code.build_prompt({"instruction": "Reverse a list.", "input": "[1, 2]"}) == "Reverse a list.\n\nInput: [1, 2]"
    tom = task("simpletom", tmp_path)
    sample = {"story": "S.", "question": "Q?", "option_a": "buy it", "option_b": "leave it", "key": "A"}
    assert tom.build_prompt(sample) == "S.\n\nQuestion: Q?\n\n(A) buy it\n(B) leave it"
    assert tom.response_schema(sample)["properties"]["answer"] == {"enum": ["A"]}
    assert tom.first_level["dimension"] and len(tom.first_level["values"]) >= 2
    assert len(task("math", tmp_path).first_level["values"]) == 7


def test_new_free_text_task_is_one_yaml_dict():
    spec = load_task({
        "name": "haiku",
        "description": "The space of haiku about nature.",
        "sample": "a request to write a haiku on a theme.",
        "fields": {"theme": {"description": "the theme"}},
        "prompt": "Write a haiku about {theme}.",
        "solution": "{prompt}",
        "answer": {"format": "\\S", "template": "{answer}"},
        "benchmarks": [],
    }, load_profile("open"))
    assert spec.build_prompt({"theme": "rain"}) == "Write a haiku about rain."
    assert spec.completion_from(Completion(text="drops on the tin roof")) == "drops on the tin roof"


@pytest.mark.parametrize(
    "patch,msg",
    [
        ({"answer": None}, "missing"),
        ({"prompt": "{nope}"}, "not in fields"),
        ({"answer": {"format": "([", "template": "{answer}"}}, "not a valid regex"),
        ({"answer": {"format": "x", "template": "#### n"}}, "must contain"),
        ({"answer": {"format": "x", "template": "{answer}", "kind": "loud"}}, "answer.kind"),
        ({"answer": {"format": "(?P<answer>x)", "template": "{answer}", "from_sample": "zzz"}}, "not a sample field"),
        ({"answer": {"format": "x", "template": "{answer}", "from_sample": "question"}}, "named group"),
        ({"fields": {"question": {"description": "q", "size": "huge"}}}, "unknown field size"),
    ],
)
def test_bad_task_config_is_one_line_error(patch, msg, tmp_path):
    d = dict(compose_config(["task=gsm8k"], tmp_path).task)
    d.update(patch)
    with pytest.raises(TreesynthError, match=msg):
        load_task(d, load_profile("constrained"))


def _strings(schema):
    """Every string schema inside a JSON schema."""
    if schema.get("type") == "string":
        yield schema
    for v in schema.get("properties", {}).values():
        yield from _strings(v)
    if "items" in schema:
        yield from _strings(schema["items"])


@pytest.mark.parametrize("name", ["gsm8k", "math", "code_alpaca", "simpletom"])
def test_open_profile_has_no_weak_model_bounds(name, tmp_path):
    """The paper's setting: no ASCII class, no length bound under 1,000 characters on any generated text,
    a free-text teacher with a budget that fits real solutions, 10 samples per call."""
    t = task(name, tmp_path, "llm=openai")
    assert t.profile.name == "open" and not t.structured and t.teacher_profile.response_max_tokens >= 1024
    for s in _strings(t.sample_schema(10)):
        assert "pattern" not in s and s["maxLength"] >= 1000, s
    assert t.sample_schema(10)["properties"]["samples"]["maxItems"] >= 10
    assert t.sample_max_tokens(10) >= 10 * 400  # ten 1,500-character problems fit
    req = t.response_request("Q?", {f.name: "A" for f in t.fields}, seed=1)
    assert req.json_schema is None and req.max_tokens >= 1024
    assert t.answer.instruction() in req.messages[-1][1]  # the free-text teacher is told the final-line form
    prompt = t.generation_prompt([], 10)
    assert all(c in prompt for c in t.criteria) and len(t.criteria) >= 5 and t.role in prompt


def test_constrained_profile_bounds_come_from_the_profile(tmp_path):
    t = task("gsm8k", tmp_path)
    assert t.profile.name == "constrained" and t.structured
    (question,) = t.fields
    assert question.schema == {"type": "string", "pattern": f"^[{t.profile.charset}]{{20,120}}$"}
    tom = task("simpletom", tmp_path)
    assert [f.schema for f in tom.fields if f.name == "option_a"][0]["pattern"].endswith("{3,60}$")
    assert [f.schema for f in tom.fields if f.name == "key"][0] == {"enum": ["A", "B"]}
    # the constrained generation prompt stays short: no criteria list
    assert "Requirements" not in t.generation_prompt([], 1)
    # llm.profile=constrained over a server, and one profile key for one run
    over = task("gsm8k", tmp_path, "llm=openai", "llm.profile=constrained", "+llm.profile_overrides.response.max_tokens=99")
    assert over.structured and over.teacher_profile.response_max_tokens == 99


def test_free_text_teacher_checks_format_and_pinned_answer(tmp_path):
    gsm = task("gsm8k", tmp_path, "llm=openai")
    long_reasoning = "Step 1: 3 × 4 = 12 — twelve “apples”.\n" * 20
    assert gsm.completion_from(Completion(text=long_reasoning + "#### 12")) == (long_reasoning + "#### 12").strip()
    assert gsm.completion_from(Completion(text=long_reasoning + "so twelve")) is None
    tom = task("simpletom", tmp_path, "llm=openai")
    sample = {"story": "S.", "question": "Q?", "option_a": "a", "option_b": "b", "key": "B"}
    assert tom.completion_from(Completion(text="She does not know.\nAnswer: B"), sample) is not None
    assert tom.completion_from(Completion(text="She does not know.\nAnswer: A"), sample) is None  # not the key
    assert tom.final_answer("x\nAnswer: A") == "A"


def test_teacher_profile_follows_the_teacher(tmp_path):
    """Generator and teacher may differ: fields follow the generator, the answer style the teacher."""
    cfg = compose_config(["task=gsm8k", "llm=embedded", "+teacher=null"], tmp_path)
    cfg.teacher = compose_config(["llm=openai"], tmp_path).llm
    t = task_of(cfg)
    assert t.profile.name == "constrained" and t.teacher_profile.name == "open" and not t.structured


def test_parse_samples_tolerates_miscounts(tmp_path):
    t = task("gsm8k", tmp_path, "llm=openai")
    data = {"samples": [{"question": f"Question number {i} — long enough?"} for i in range(12)]}
    c = Completion(text="", data=data)
    assert len(t.parse_samples(c, 10)) == 10 and len(t.parse_samples(c)) == 12
    assert len(t.parse_samples(Completion(text="", data={"samples": data["samples"][:9]}), 10)) == 9


def test_plain_text_lists_parse_when_a_server_ignores_the_schema(tmp_path):
    """Numbering and markdown variants of the authors' list format; not-JSON answers are read as lists."""
    from treesynth.tasks.plain import parse_listed

    text = ("Here are 3 problems:\n\n1. Amélie has $12. She spends 25% on “croissants”.\nHow much is left?\n"
            "2) A train leaves at 8:15 and stops 3 times.\n**3.** What is $\\frac{3}{4}$ of 48?\n")
    assert parse_listed(text, ["question"]) == [
        {"question": "Amélie has $12. She spends 25% on “croissants”.\nHow much is left?"},
        {"question": "A train leaves at 8:15 and stops 3 times."}, {"question": "What is $\\frac{3}{4}$ of 48?"}]
    assert parse_listed("**Question 1:** Tom has 5.\n**Question 2:** Ann has 6.", ["question"]) == [
        {"question": "Tom has 5."}, {"question": "Ann has 6."}]
    code = "Instruction 1: Reverse a list.\nInput 1: [1, 2, 3]\n\nInstruction 2: Sort a dict by value.\nInput 2:\n"
    assert parse_listed(code, ["instruction", "input"]) == [
        {"instruction": "Reverse a list.", "input": "[1, 2, 3]"}, {"instruction": "Sort a dict by value.", "input": ""}]
    assert parse_listed("no list here, 3. things", ["question"]) == []
    gsm = task("gsm8k", tmp_path, "llm=openai")
    c = Completion(text="1. First problem, long enough?\n2. Second one?", error="invalid JSON: no JSON object")
    assert [s["question"] for s in gsm.parse_samples(c, 10)] == ["First problem, long enough?", "Second one?"]
    assert gsm.parse_samples(Completion(text="1. cut off", finish_reason="length", error="invalid JSON: x")) == []


def test_weak_free_text_teacher_gets_one_final_answer_call(tmp_path):
    """A free answer that never ends in '#### n' (a weak model): one call for the final answer alone, written
    after the teacher's own text; counted. A capable teacher never reaches it."""
    import asyncio

    from treesynth.llm import LLM
    from treesynth.methods.base import PromptRecord
    from treesynth.respond import respond_one
    from treesynth.testing.scripted import ScriptedBackend

    gsm = task("gsm8k", tmp_path, "llm=openai")
    titles = []

    def weak(request):
        titles.append((request.json_schema or {}).get("title", "text"))
        if request.json_schema is None:
            return "She has 3 and buys 4, so she has seven apples in all."
        return json.dumps({"answer": "7"})

    rec = PromptRecord(id="0", prompt="Ann has 3 apples and buys 4. How many?", sample={"question": "q"})
    completion, attempts, final = asyncio.run(respond_one(LLM(ScriptedBackend(responder=weak)), gsm, rec, seed=0))
    assert completion == "She has 3 and buys 4, so she has seven apples in all.\n#### 7" and final
    assert titles == ["text"] * 4 + ["final_answer"] and attempts == 5
    capable = LLM(ScriptedBackend(responder=lambda r: "3 + 4 = 7.\n#### 7"))
    assert asyncio.run(respond_one(capable, gsm, rec, seed=0)) == ("3 + 4 = 7.\n#### 7", 1, False)
    code = task("code_alpaca", tmp_path, "llm=openai")  # code is its own answer: no second call
    assert code.final_answer_request("p", {}, "some text", seed=1) is None
