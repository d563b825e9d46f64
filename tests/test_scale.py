"""Paper-scale synthesis on the scripted backend: prompt hygiene before the teacher (no teacher call for
a dropped prompt), the budget (a clean stop, then a resume with no call paid twice), progress lines in a
log, plan-mode dollars, and the streaming pieces (keyed checkpoint logs, the compact dedup index)."""

from __future__ import annotations

import json
import logging
import time

import pytest
from conftest import compose_config

from treesynth.errors import TreesynthError
from treesynth.io import read_jsonl
from treesynth.llm import ChatRequest, price_of
from treesynth.llm.client import Budget, BudgetExceeded, Price
from treesynth.methods.base import KeyedLog
from treesynth.methods.hygiene import NearDupIndex, dedup
from treesynth.pipeline import run_stage, stage_dir, stage_key
from treesynth.progress import Progress
from treesynth.testing.scripted import ScriptedBackend

TEMP = ["llm=scripted", "stages=[synthesize]", "method=temperature", "data.hygiene.decontaminate=false"]


def _teacher_prompts(requests: list[ChatRequest]) -> list[str]:
    return [r.messages[-1][1] for r in requests if (r.json_schema or {}).get("title") == "response"]


def test_teacher_is_never_asked_about_a_prompt_hygiene_drops(tmp_path, monkeypatch):
    # Every 3rd generation call returns the sample of call 0: exact duplicates of an earlier prompt.
    orig = ScriptedBackend.default_response
    first: dict[str, str] = {}
    seen: list[ChatRequest] = []

    def duplicating(self, request):
        seen.append(request)
        out = orig(self, request)
        if (request.json_schema or {}).get("title") == "samples":
            if not first:
                first["text"] = out
            elif sum(1 for r in seen if (r.json_schema or {}).get("title") == "samples") % 3 == 0:
                return first["text"]
        return out

    monkeypatch.setattr(ScriptedBackend, "default_response", duplicating)
    cfg = compose_config([*TEMP, "data.size=30"], tmp_path)
    metrics = run_stage(cfg, "synthesize")
    rows = read_jsonl(stage_dir(cfg, "synthesize") / "data.jsonl")
    asked = _teacher_prompts(seen)
    assert len(rows) == 30 and metrics["exact_duplicates"] >= 10
    assert len(asked) == len(set(asked)) == 30 == metrics["teacher_asked"]  # none for a duplicate, none spare
    assert all(sum(r["prompt"] in a for a in asked) == 1 for r in rows)  # each record's prompt asked once
    assert metrics["dropped_by_hygiene"] == metrics["exact_duplicates"] + metrics["near_duplicates"]


TREE = ["method=treesynth", "method.pivots=3", "method.max_depth=2", "method.max_children=3"]


@pytest.mark.parametrize("method", [[], TREE], ids=["temperature", "treesynth"])
def test_budget_stops_cleanly_then_resumes_without_paying_twice(tmp_path, monkeypatch, method):
    price = ["llm.price.input=1000", "llm.price.output=1000", *method]  # $0.001 a token
    full = compose_config([*TEMP, "data.size=20", *price], tmp_path / "ref")
    reference = run_stage(full, "synthesize")
    need = reference["cost_usd"]
    assert need > 0 and reference["llm"]["cost_usd"] == pytest.approx(need, abs=1e-6)

    calls: list[str] = []
    orig = ScriptedBackend.complete

    async def counting(self, request):
        calls.append(request.cache_key(self.model))
        return await orig(self, request)

    monkeypatch.setattr(ScriptedBackend, "complete", counting)
    low = compose_config([*TEMP, "data.size=20", *price, f"llm.budget_usd={need / 2}"], tmp_path / "run")
    with pytest.raises(TreesynthError, match=r"^stopped: budget llm.budget_usd=.* reached: \$.* spent") as e:
        run_stage(low, "synthesize")
    assert "\n" not in str(e.value)
    out = stage_dir(low, "synthesize")
    spent = json.loads((out / "cost.json").read_text())["spent_usd"]
    assert 0 < spent <= need / 2 and not (out / "data.jsonl").exists()
    assert f"reached: ${spent:.4f} spent" in str(e.value)  # the spend once the calls in flight came back
    first_run = len(calls)
    assert first_run > 0

    high = compose_config([*TEMP, "data.size=20", *price, f"llm.budget_usd={need * 2}"], tmp_path / "run")
    assert stage_dir(high, "synthesize") == out  # the budget is no part of the artifact key: same artifact
    metrics = run_stage(high, "synthesize")
    assert len(calls) == len(set(calls))  # no request sent twice over both runs
    assert metrics["cost_usd"] == pytest.approx(need, rel=1e-6)  # both runs together paid what one run pays
    assert read_jsonl(out / "data.jsonl") == read_jsonl(stage_dir(full, "synthesize") / "data.jsonl")


def test_budget_reserves_the_worst_case_of_calls_in_flight():
    budget = Budget(1.0)
    budget.reserve(0.6)
    with pytest.raises(BudgetExceeded, match="budget llm.budget_usd=1 reached"):
        budget.reserve(0.6)
    budget.settle(0.6, 0.1)  # the call came back cheaper than its worst case
    budget.reserve(0.6)
    assert budget.total == pytest.approx(0.1) and budget.refused == 1


def test_price_table_and_override(tmp_path):
    cfg = compose_config(["llm=openai", "llm.model=gpt-4o-2024-08-06"], tmp_path)
    assert price_of(cfg.llm) == Price(2.5, 10.0)  # the longest table prefix: gpt-4o, not gpt-4o-mini
    cfg = compose_config(["llm=openai", "llm.model=my-local", "llm.price.output=3"], tmp_path)
    assert price_of(cfg.llm) == Price(0.0, 3.0)
    assert Price(2.0, 8.0).cost(1_000_000, 500_000) == pytest.approx(6.0)


def test_money_keys_are_not_in_the_synthesis_key(tmp_path):
    """A budget or price changes what a run may cost, never what it makes: the same artifact resumes."""
    base = ["llm=openai", "llm.model=gpt-4o", "+llm@teacher=openai"]
    key = stage_key(compose_config(base, tmp_path), "synthesize")
    for money in (["llm.budget_usd=5"], ["llm.price.input=9", "teacher.price.output=1"], ["llm.prices={}"],
                  ["teacher.budget_usd=1"]):
        assert stage_key(compose_config([*base, *money], tmp_path), "synthesize") == key, money
    assert stage_key(compose_config([*base, "llm.model=gpt-4o-mini"], tmp_path), "synthesize") != key


def test_plan_prints_dollars(tmp_path, capsys):
    cfg = compose_config(["experiment=paper_main", "task=gsm8k", "llm=openai", "llm.model=gpt-4o", "stages=[synthesize]",
                          "method.plan_only=true"], tmp_path)
    cost = run_stage(cfg, "synthesize")["plan"]["cost"]
    assert 0 < cost["likely_usd"] <= cost["upper_bound_usd"]
    assert cost["price_per_million_tokens"]["teacher"] == {"input": 2.5, "output": 10.0}
    assert f"[plan] expected cost: ${cost['likely_usd']:,.2f}" in capsys.readouterr().out


def test_progress_lines_in_a_log_while_it_works(tmp_path, caplog):
    cfg = compose_config([*TEMP, "data.size=40", "llm.runtime.delay_s=0.1", "progress.every_s=0.2",
                          "progress.bar=never", "data.runtime.chunk=8"], tmp_path)
    with caplog.at_level(logging.INFO, logger="treesynth"):
        metrics = run_stage(cfg, "synthesize")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[synthesize] records ")]
    assert len(lines) >= 3, lines
    assert "/40 (" in lines[-1] and "requests " in lines[-1] and "$0.0000" in lines[-1] and "tokens " in lines[0]
    assert lines[-1].startswith("[synthesize] records 40/40 (100%)") and lines[-1].endswith("| finished")
    assert all("finished" not in line for line in lines[:-1])  # the timer's lines come while it works
    assert metrics["progress"]["elapsed_s"] > 0


def test_first_progress_line_comes_after_first_s_then_every_s(caplog):
    with caplog.at_level(logging.INFO, logger="treesynth"):
        p = Progress("x", 10, bar="never", every_s=30, first_s=0.05)
        time.sleep(0.4)
        p.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[x] ")]
    assert len(lines) == 2 and lines[-1].endswith("| finished")  # one early line, none at 30 s yet, the last


def test_progress_ends_with_one_final_line_however_often_it_is_closed(caplog):
    with caplog.at_level(logging.INFO, logger="treesynth"):
        quiet = Progress("quiet", 10, bar="never", every_s=30)  # never reported: no line unless asked
        quiet.close()
        stopped = Progress("stopped", 10, bar="never", every_s=30)
        stopped.close(final_line=True)  # a budget stop: the counts are shown
        stopped.close()
        busy = Progress("busy", 10, bar="never", every_s=30, first_s=0.02)
        time.sleep(0.1)
        busy.close(final_line=True)
        busy.close()
    ends = [r.getMessage().split()[0] for r in caplog.records if r.getMessage().endswith("| finished")]
    assert ends == ["[stopped]", "[busy]"]


def test_eta_waits_for_1_percent_then_goes_by_the_rate_since_the_last_line(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    p = Progress("x", 1000, bar="never")
    now[0] += 100
    p.set(5)  # a pipeline still filling: 5 records in 100 s
    assert "ETA" not in p.line()
    now[0] += 10
    p.set(505)  # 500 in the last 10 s: 495 left at 50/s, not at the 4.6/s since the start
    assert p.line().endswith("| ETA 9s")


def test_progress_counts_llm_work_since_it_started():
    class Stats:
        requests = calls = cache_hits = prompt_tokens = completion_tokens = 0
        cost_usd = 0.0

    class Fake:
        stats = Stats()

    llm = Fake()
    llm.stats.requests = 5
    p = Progress("x", 10, llms=(llm, llm), bar="never", every_s=60)
    llm.stats.requests, llm.stats.calls, llm.stats.cost_usd = 9, 4, 0.5
    p.update(5)
    line = p.line()
    p.close()
    assert line.startswith("[x] records 5/10 (50%)") and "requests 4 " in line and "$0.5000" in line and "ETA" in line


def test_keyed_log_reads_rows_back_by_key_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "calls.jsonl"
    log = KeyedLog(path, "call")
    for c in range(5):
        log.append({"call": c, "samples": [f"é{c}"]})
    log.close()
    with open(path, "a") as f:
        f.write('{"call": 5, "sam')  # killed mid-append
    again = KeyedLog(path, "call")
    assert len(again) == 5 and again[3] == {"call": 3, "samples": ["é3"]} and 5 not in again
    assert again.get_many([4, 0, 9]) == {4: {"call": 4, "samples": ["é4"]}, 0: {"call": 0, "samples": ["é0"]}}
    again.append({"call": 5, "samples": []})
    again.close()
    assert KeyedLog(path, "call")[5] == {"call": 5, "samples": []}


def test_near_dup_index_matches_the_list_dedup():
    base = "Tom has 3 apples and buys 4 more apples at the market. How many apples does Tom have now?"
    texts = [base, base.upper(), base.replace("market", "markets"), "A different question about trains?"]
    index = NearDupIndex(0.85)
    assert [index.add(t) for t in texts] == [None, "exact", "near", None]
    kept, exact, near = dedup([{"prompt": t} for t in texts], 0.85)
    assert len(kept) == 2 and (exact, near) == (1, 1)


def test_report_costs_each_dataset_once(tmp_path):
    from treesynth.report import Run, cost_section
    from treesynth.summary import format_summary

    def run(method: str, model: str, cost: float, artifact: str) -> Run:
        cfg = {"method": {"name": method}, "llm": {"model": "gpt-4o"}, "model": {"name": model}, "data": {"size": 100}}
        return Run(tmp_path / f"{method}-{model}.json", {"config": cfg, "artifacts": {"synthesize": artifact},
                                                          "stages": {"synthesize": {"records": 100, "cost_usd": cost}}})

    # two fine-tuned models trained on one treesynth dataset: its cost is listed once
    runs = [run("treesynth", "a", 12.5, "/art/t"), run("treesynth", "b", 12.5, "/art/t"),
            run("temperature", "a", 3.25, "/art/u")]
    lines = "\n".join(cost_section(runs)).splitlines()
    table = [line for line in lines if line.startswith("| gpt-4o")]
    assert len(table) == 2  # in the report's method order
    assert any("TreeSynth" in t and "12.50" in t for t in table) and any("temperature" in t and "3.25" in t for t in table)
    assert "cost_usd=$12.5000" in format_summary({"stages": {"synthesize": {"records": 100, "cost_usd": 12.5}}})


def test_training_progress_reports_steps_and_loss(caplog):
    from types import SimpleNamespace

    from training.common import TrainProgress

    state = SimpleNamespace(is_world_process_zero=True, max_steps=10, global_step=0)
    cb = TrainProgress()
    with caplog.at_level(logging.INFO, logger="treesynth"):
        cb.on_train_begin(None, state, None)
        for step in range(1, 5):
            state.global_step = step
            cb.on_log(None, state, None, logs={"loss": 2.0 / step})
            cb.on_step_end(None, state, None)
        line = cb.progress.line()
        cb.on_train_end(None, state, None)
    assert line.startswith("[train] steps 4/10 (40%)") and "loss 0.5000" in line
    assert any(r.getMessage().startswith("[train] steps 4/10") for r in caplog.records)
