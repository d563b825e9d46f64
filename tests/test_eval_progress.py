"""Evaluation progress (evaluation/progress.py): items done / total while lm-eval runs the requests, as log
lines every progress.every_s seconds without a TTY, and the totals in eval.json. The model is a scripted
lm-eval LM that reports each finished request through its cache hook, as lm-eval's hf and vllm models do."""

from __future__ import annotations

import copy
import logging
import re
import time

from omegaconf import OmegaConf
from test_eval_tasks import ScriptedLM, eval_cfg, simpletom_fixture

import treesynth.progress
from evaluation.harness import run_eval
from evaluation.progress import counted_model

STEP_S = 0.1  # per request: long enough for several progress lines over the fixture's 6 items


class SlowScriptedLM(ScriptedLM):
    """Answers one request at a time, reporting each through the cache hook; records whether lm-eval's
    own tqdm was asked for."""

    def __init__(self, answers: dict[str, str]):
        super().__init__(answers)
        self.tqdm_disabled: list[bool] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self.tqdm_disabled.append(disable_tqdm)
        out = []
        for req in requests:
            time.sleep(STEP_S)
            out += super().generate_until([req])
            self.cache_hook.add_partial("generate_until", req.args, out[-1])
        return out


def test_evaluation_logs_items_done_of_total_while_it_runs(tmp_path, caplog, monkeypatch):
    data = tmp_path / "data"
    fixture = simpletom_fixture(data)
    answers = {r["question"]: "Answer: A" for rows in fixture.values() for r in rows}
    lm = SlowScriptedLM(answers)
    # the run's settings, as the stage sets them (configure); the process-wide ones come back after the test
    monkeypatch.setattr(treesynth.progress, "_configured", copy.copy(treesynth.progress._configured))
    treesynth.progress.configure(OmegaConf.create({"progress": {"every_s": 0.06, "first_s": 0.06, "bar": "auto"}}))
    with caplog.at_level(logging.INFO, logger="treesynth"):
        res = run_eval(eval_cfg(limit=None), ["simpletom"], "scripted", None, str(data), tmp_path / "out",
                       lm=lm, stage="evaluate_base")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[evaluate_base] items ")]
    counts = [tuple(map(int, m.groups())) for line in lines if (m := re.search(r"items (\d+)/(\d+)", line))]
    assert len(counts) >= 3, lines  # while it ran, and the final line
    assert all(total == 6 for _, total in counts), lines  # the fixture's 6 documents
    assert any(0 < done < 6 for done, _ in counts), lines  # counted inside lm-eval's loop, not only after it
    assert counts[-1] == (6, 6) and "/s" in lines[-1]
    assert lm.tqdm_disabled == [True]  # one progress view: lm-eval's own bar is off
    assert res["progress"]["items_per_s"] > 0 and res["benchmarks"]["simpletom"]["n"] == 6
    # the model is handed back as it was: no counting wrapper, its own cache hook
    assert "generate_until" not in vars(lm) and type(lm.cache_hook).__name__ == "CacheHook"


def test_multiple_choice_requests_count_as_documents():
    """Several loglikelihood requests of one document (its choices) make one item."""

    class Req:
        def __init__(self, doc_id: int):
            self.task_name, self.doc_id, self.args = "t", doc_id, ("ctx", "choice")

    class ChoiceLM(ScriptedLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            for req in requests:
                self.cache_hook.add_partial("loglikelihood", req.args, (0.0, True))
                seen.append(progress.done)
            return [(0.0, True)] * len(requests)

    seen: list[int] = []
    with counted_model(ChoiceLM({}), None, 1, "evaluate") as (lm, progress):
        lm.loglikelihood([Req(d) for d in range(3) for _ in range(4)])  # 3 documents x 4 choices
        assert (progress.done, progress.total) == (3, 3)
    assert seen == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
