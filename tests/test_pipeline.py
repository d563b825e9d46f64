"""Artifact keys, reuse on rerun, resume, upstream closure, secrets: the pipeline's contracts."""

from __future__ import annotations

import json

import pytest

from treesynth import pipeline
from treesynth.datasets import file_digest
from treesynth.errors import TreesynthError
from treesynth.pipeline import STAGES, run_pipeline, scrub_secrets, stage_dir, stage_key


@pytest.fixture
def fake_stages(monkeypatch):
    """Replace stage bodies with counters; keys and the store stay the real ones."""
    calls: dict[str, int] = {}

    def body(ctx):
        calls[ctx.stage] = calls.get(ctx.stage, 0) + 1
        for up, d in ctx.inputs.items():  # upstream artifacts exist before a stage runs
            assert (d / pipeline.DONE_FILE).exists(), up
        (ctx.dir / "out.txt").write_text(ctx.stage)
        return {"value": 1}

    monkeypatch.setattr(pipeline, "_entry", lambda stage: body)
    return calls


def test_keys_ignore_runtime_knobs_but_not_outputs(make_cfg):
    base = make_cfg()
    assert stage_key(base, "synthesize") == stage_key(make_cfg("llm.runtime.batch_size=3"), "synthesize")
    assert stage_key(base, "synthesize") != stage_key(make_cfg("data.size=25"), "synthesize")
    assert stage_key(base, "synthesize") != stage_key(make_cfg("seed=1"), "synthesize")


def test_model_sweep_shares_one_dataset(make_cfg):
    a, b = make_cfg(), make_cfg("model.path=other/model")
    assert stage_key(a, "synthesize") == stage_key(b, "synthesize")
    assert stage_key(a, "train") != stage_key(b, "train")
    # evaluation of a fine-tuned model depends on everything upstream
    assert stage_key(a, "evaluate") != stage_key(make_cfg("data.size=25"), "evaluate")
    # the base model's evaluation does not depend on the synthetic data
    assert stage_key(a, "evaluate_base") == stage_key(make_cfg("data.size=25"), "evaluate_base")


def test_rerun_does_no_work_and_upstream_is_pulled_in(make_cfg, fake_stages, tmp_path):
    cfg = make_cfg("stages=[train]")
    summary = run_pipeline(cfg, tmp_path / "run1")
    assert fake_stages == {"synthesize": 1, "train": 1}
    assert set(summary["stages"]) == {"synthesize", "train"}
    saved = json.loads((tmp_path / "run1" / "summary.json").read_text())
    assert saved["stages"]["train"]["value"] == 1
    run_pipeline(cfg, tmp_path / "run2")
    assert fake_stages == {"synthesize": 1, "train": 1}


def test_interrupted_stage_resumes_in_same_dir(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg("stages=[synthesize]")
    seen = []

    def flaky(ctx):
        seen.append(sorted(p.name for p in ctx.dir.iterdir()))
        if len(seen) == 1:
            (ctx.dir / "checkpoint.jsonl").write_text("partial\n")
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(pipeline, "_entry", lambda stage: flaky)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "r")
    assert not (stage_dir(cfg, "synthesize") / pipeline.DONE_FILE).exists()
    run_pipeline(cfg, tmp_path / "r")
    assert "checkpoint.jsonl" in seen[1]


def test_unknown_stage_is_one_line_error(make_cfg, tmp_path):
    with pytest.raises(TreesynthError, match=r"^unknown stage 'synthesise'; choose from diversity, evaluate, "
                                             r"evaluate_base, synthesize, train \(stages=\[\.\.\.\]\)$"):
        run_pipeline(make_cfg("stages=[synthesise]"), tmp_path)


def test_unrecorded_run_gets_the_stage_table_context_and_records_nothing(make_cfg, monkeypatch, tmp_path):
    """What the other ranks of `training.launch` run: the same context run_stage gives, no stage.json."""
    cfg = make_cfg()
    seen = []
    monkeypatch.setattr(pipeline, "_entry", lambda stage: lambda ctx: seen.append(ctx) or {"steps": 1})
    assert pipeline.run_unrecorded(cfg, "train") == {"steps": 1}
    (ctx,) = seen
    assert (ctx.stage, ctx.key, ctx.dir) == ("train", stage_key(cfg, "train"), stage_dir(cfg, "train"))
    assert ctx.dir.is_dir() and ctx.inputs == {"synthesize": stage_dir(cfg, "synthesize")}
    assert not (ctx.dir / pipeline.DONE_FILE).exists() and not list(ctx.dir.parent.glob("*.lock"))


def test_file_lock_lets_one_holder_in_at_a_time(tmp_path):
    """The stage lock (treesynth/io.py file_lock, flock): a second holder waits until the first leaves."""
    import threading
    import time

    from treesynth.io import file_lock

    lock, order, held, waiting = tmp_path / "deep" / "k.lock", [], threading.Event(), threading.Event()

    def first():
        with file_lock(lock):
            order.append("first in")
            held.set()
            waiting.wait(5)
            time.sleep(0.2)  # the second is blocked in flock meanwhile
            order.append("first out")

    def second():
        held.wait(5)
        waiting.set()
        with file_lock(lock):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == ["first in", "first out", "second in"]


def test_secrets_are_scrubbed():
    cfg = {"llm": {"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY", "nested": [{"token": "t"}],
                   "headers": {"Authorization": "Bearer x"}, "hf_token": "hf_x", "openaiApiKey": "sk"},
           # settings whose names merely contain "token" are config, not secrets
           "task": {"response": {"max_tokens": 384}}, "method": {"max_tokens": {"sample": None}}}
    assert scrub_secrets(cfg) == {
        "llm": {"api_key": "<redacted>", "api_key_env": "OPENAI_API_KEY", "nested": [{"token": "<redacted>"}],
                "headers": {"Authorization": "<redacted>"}, "hf_token": "<redacted>", "openaiApiKey": "<redacted>"},
        "task": {"response": {"max_tokens": 384}}, "method": {"max_tokens": {"sample": None}},
    }


def test_every_stage_entry_resolves_to_a_function():
    for s in STAGES.values():
        assert callable(pipeline._entry(s)), s.entry
    assert set(pipeline.KEY_INPUTS) == {s.name for s in STAGES.values() if s.inputs}
    for name in pipeline.KEY_INPUTS:
        assert callable(pipeline.KEY_INPUTS.load(name)), name


def test_keys_follow_local_data_content(make_cfg, tmp_path):
    """Another data dir, an edited data file or an edited method input file: a new artifact, never a stale one."""
    def data(root, text):
        (root / "gsm8k").mkdir(parents=True)
        (root / "gsm8k" / "train.jsonl").write_text(text)
        return root

    a, b = data(tmp_path / "a", '{"question": "q", "answer": "#### 1"}\n'), data(tmp_path / "b", "{}\n")
    copy = data(tmp_path / "copy", (a / "gsm8k" / "train.jsonl").read_text())
    key = {name: stage_key(make_cfg("method=human", f"data.dir={d}"), "synthesize") for name, d in
           [("a", a), ("b", b), ("copy", copy)]}
    assert key["a"] != key["b"] and key["a"] == key["copy"]  # by content, not by path
    assert stage_key(make_cfg("data.dir=null"), "evaluate_base") != stage_key(make_cfg(f"data.dir={a}"), "evaluate_base")
    # a file named by the method's config
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "x"}\n')
    before = stage_key(make_cfg("method=evol_instruct", f"method.seed_file={seeds}"), "synthesize")
    seeds.write_text('{"instruction": "changed"}\n')
    assert stage_key(make_cfg("method=evol_instruct", f"method.seed_file={seeds}"), "synthesize") != before
    cfg = make_cfg("method=human", f"data.dir={a}")
    assert pipeline.stage_config(cfg, STAGES["synthesize"])["inputs"]["data"] == {
        "gsm8k/train.jsonl": file_digest(a / "gsm8k" / "train.jsonl")}
