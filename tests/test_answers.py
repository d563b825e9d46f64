"""One table of answer-extraction cases that verification (treesynth/methods/verify.py) and the evaluation's
scoring (evaluation/tasks/utils.py) must both pass: they read answers through treesynth/answers.py, so a
completion verification keeps is one the evaluation scores the same way."""

from __future__ import annotations

import pytest

from evaluation.tasks import utils
from treesynth import answers
from treesynth.benchmarks import benchmark
from treesynth.methods import verify

# (benchmark, completion, gold as the benchmark stores it, the extracted answer, whether it is correct)
TABLE = [
    ("gsm8k", "3 boxes of 411 pens and 1 more.\n#### 1,234", "so\n#### 1234", "1234", True),
    ("gsm8k", "It costs $18.\n#### $18.00", "#### 18", "18", True),
    ("gsm8k", "#### -7", "#### -7", "-7", True),
    ("gsm8k", "the answer is 12", "#### 12", None, False),  # strict: no `####`, no answer
    ("gsm8k", "#### 13", "#### 12", "13", False),
    ("math", r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}", r"\frac{1}{2}", True),
    ("math", r"The final answer is $\boxed{\sqrt{\frac{a}{b^{2}}}}$.", r"\sqrt{\frac{a}{b^{2}}}",
     r"\sqrt{\frac{a}{b^{2}}}", True),  # nested braces
    ("math", r"first \boxed{3}, then \boxed{4}", "4", "4", True),  # the last box
    ("math", r"hence \fbox{42}", "42", "42", True),
    ("math", r"hence $\boxed 5$", "5", "5", True),
    ("math", r"$\boxed{0.5}$", r"\frac{1}{2}", "0.5", True),  # equivalent, not equal strings
    ("math", r"$\boxed{3}$", "4", "3", False),
    ("math", "no box here", "4", None, False),
]

CODE_TABLE = [  # (completion, the code in it)
    ("Here:\n```python\ndef f(x):\n    return x + 1\n```\nDone.", "def f(x):\n    return x + 1"),
    ("```py\ndef f(x):\n    return x + 1\n```", "def f(x):\n    return x + 1"),
    ("```python\ndef f(x):\n    return x + 1", "def f(x):\n    return x + 1"),  # cut off by max tokens
]


@pytest.mark.parametrize(("bench", "text", "gold", "expected", "correct"), TABLE)
def test_verification_reads_the_table(bench, text, gold, expected, correct):
    b = benchmark(bench)
    got = verify.extract_answer(text, b)
    assert got == (answers.normalizer(b.normalize)(expected) if expected is not None else None)
    gold_answer = b.final_answer(gold) if bench == "gsm8k" else gold
    assert answers.equivalent(got, gold_answer, b.normalize) is correct  # how votes are grouped


@pytest.mark.parametrize(("bench", "text", "gold", "expected", "correct"), TABLE)
def test_scoring_reads_the_table(bench, text, gold, expected, correct):
    if bench == "gsm8k":
        assert utils.extract_gsm8k(text) == (answers.normalize_number(expected) if expected else None)
        assert utils.process_results_gsm8k({"answer": gold}, [text])["exact_match"] == int(correct)
    else:
        assert utils.process_results_math({"answer": gold}, [text]) == {"exact_match": int(correct)}


@pytest.mark.parametrize(("text", "code"), CODE_TABLE)
def test_code_fences_for_verification_and_scoring(text, code):
    assert verify.code_of(text) == code == utils.extract_code(text)
    doc = {"test_list": ["assert f(1) == 2"], "test_setup_code": ""}
    assert utils.process_results_mbpp(doc, [text]) == {"pass_at_1": 1}


def test_self_consistency_groups_equivalent_votes():
    v = verify.Verifier.__new__(verify.Verifier)
    v.bench = benchmark("math")
    counts = v._tally([r"\frac{1}{2}", "0.5", "3"])
    assert sorted(counts.values()) == [1, 2]


def test_regex_extractor_and_numeric_match():
    assert answers.final_answer("blah. Answer: Paris.", "regex:Answer: (?P<answer>\\w+)", "text") == "paris"
    assert answers.final_answer("x = 3.14159", "last_number", "number") == "3.14159"
    assert answers.numeric_match("3.1416", "3.14159", tolerance=1e-3)
    assert not answers.numeric_match("3.2", "3.14159", tolerance=1e-3)
    assert not answers.numeric_match("pi", "3.14159", tolerance=1.0)
    with pytest.raises(ValueError, match="unknown answer extractor"):
        answers.extractor("boxxed")
