"""Fail fast on bad input (treesynth/preflight.py, treesynth/settings/) and write failures that leave no
artifact a rerun would take as finished (treesynth/io.py, treesynth/pipeline.py).

run.py is run as a subprocess for a few bad inputs (exit code 2, one line on stderr naming the key, in
under 3 s: before any heavy import); the rest is checked in-process. Full and read-only artifact roots are
tested on real filesystems (a small tmpfs, a read-only mount) inside a private mount namespace when the
machine allows one, and by injecting ENOSPC at the write points otherwise too."""

from __future__ import annotations

import errno
import gzip
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, compose_config

from treesynth import io as tio
from treesynth import pipeline
from treesynth.errors import TreesynthError
from treesynth.io import JsonlAppender, WriteFailed, atomic_write_bytes, read_jsonl
from treesynth.pipeline import DONE_FILE, run_stage, stage_dir
from treesynth.preflight import check_input_file, preflight
from treesynth.settings import check_settings

BENCH = REPO / "tests" / "fixtures" / "benchdata"
# The cheap synthesis run of the end-to-end checks: scripted LLM, local benchmark fixtures.
SCRIPTED = ["stages=[synthesize]", "llm=scripted", "method=temperature", "data.size=3", f"data.dir={BENCH}",
            "wandb.mode=disabled"]


def run_py(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The run and the CPU seconds it used: on a loaded 2-core machine wall time measures the neighbours
    (the same check took 3.4 s of wall and 0.9 s of CPU beside a compiler), CPU time what run.py loads."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), f"hydra.run.dir={cwd / 'hydra'}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# ---- run.py: one line, exit 2, at once ------------------------------------------------------------------
@pytest.mark.parametrize(("args", "line"), [
    (["data.size=abc"], "error: data.size must be an integer, got 'abc'"),
    (["seed=abc"], "error: seed must be an integer, got 'abc'"),
    (["method.pivots=-1"], "error: method.pivots must be >= 2, got -1"),
    (["eval.limit=x"], "error: eval.limit must be an integer or null, got 'x'"),
    (["llm=openai", "llm.runtime.max_concurrency=0"], "error: llm.runtime.max_concurrency must be >= 1, got 0"),
    # Hydra's own errors, one line too: a key the option does not have, an option that does not exist
    (["llm.runtime.max_concurrency=0"], "error: Could not override 'llm.runtime.max_concurrency'. To append to "
     "your config use +llm.runtime.max_concurrency=0 (Key 'max_concurrency' is not in struct)"),
    (["llm=nope"], "error: In 'config': Could not find 'llm/nope' Available options in 'llm': embedded openai"),
    (["data.dir=/no/such/dir"], "error: data.dir=/no/such/dir is not a directory"),
    (["method=evol_instruct", "method.seed_file=BAD"], "error: method.seed_file=BAD line 2: not valid JSON"),
])
def test_run_py_rejects_bad_input_in_one_line_at_once(tmp_path, args, line):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"question": "ok"}\n{"question": \n')
    args, line = [a.replace("BAD", str(bad)) for a in args], line.replace("BAD", str(bad))
    proc, seconds = run_py([f"paths.artifacts={tmp_path / 'a'}", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(line), proc.stderr
    assert seconds < 3, f"{seconds:.1f} s of CPU"
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())  # nothing ran


def test_preflight_imports_nothing_heavy(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from pathlib import Path
        from conftest import compose_config
        from treesynth.preflight import preflight
        preflight(compose_config([], Path({str(tmp_path)!r})))
        heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'transformers', 'trl', 'datasets',
                                                                   'lm_eval', 'vllm', 'wandb'}})
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- settings: types and ranges, every shipped option valid, unknown keys left alone --------------------
@pytest.mark.parametrize(("overrides", "problem"), [
    (["method.pivots=-1"], "method.pivots must be >= 2, got -1"),
    (["llm=openai", "llm.runtime.max_concurrency=0"], "llm.runtime.max_concurrency must be >= 1, got 0"),
    (["eval.limit=x"], "eval.limit must be an integer or null, got 'x'"),
    (["eval.limit=0"], "eval.limit must be >= 1, got 0"),
    (["train.lr=abc"], "train.lr must be a number, got 'abc'"),
    (["train.max_steps=1.5"], "train.max_steps must be an integer, got 1.5"),
    (["train.per_device_batch_size=0"], "train.per_device_batch_size must be >= 1, got 0"),
    (["train.packing=yes"], "train.packing must be true or false, got 'yes'"),
    (["train.lora.dropout=1"], "train.lora.dropout must be in [0, 1), got 1"),
    (["train.runtime.precision=fp8"], "train.runtime.precision must be one of auto, bf16, fp16, fp32, got 'fp8'"),
    (["model.finetune.lora.r=abc"], "train.lora.r must be an integer, got 'abc'"),  # through interpolation
    (["data.hygiene.near_dup_threshold=1.5"], "data.hygiene.near_dup_threshold must be in (0, 1], got 1.5"),
    (["data.verify.k=0"], "data.verify.k must be >= 1, got 0"),
    (["eval.runtime.batch_size=many"], "eval.runtime.batch_size must be an integer or auto, got 'many'"),
    (["wandb.mode=on"], "wandb.mode must be one of offline, online, disabled, got 'on'"),
    (["eval.math_split=math5000"], "eval.math_split must be one of test, math500, got 'math5000'"),  # the registry's
    (["eval.sandbox=docker"], "eval.sandbox must be one of bwrap, guard_only, got 'docker'"),
    (["progress.every_s=0"], "progress.every_s must be > 0, got 0"),
    (["data.runtime.chunk=0"], "data.runtime.chunk must be >= 1, got 0"),
    (["stages=synthesize"], "stages must be a list of strings, got 'synthesize'"),
    (["method=evol_instruct", "method.copy_threshold=2"], "method.copy_threshold must be in (0, 1], got 2"),
    (["method=persona_hub", "method.pool_size=0"], "method.pool_size must be >= 1, got 0"),
    (["method.temperatures.pivot=-1"], "method.temperatures.pivot must be >= 0, got -1"),
    (["+llm@teacher=scripted", "teacher.runtime.delay_s=-1"], "teacher.runtime.delay_s must be >= 0, got -1"),
    (["teacher={backend: embedded, model: s}"], "teacher is missing profile, profile_overrides, budget_usd, "
     "price, runtime (set +teacher.KEY=... or add them to the option's YAML)"),  # a whole LLM option: +llm@teacher=embedded
    (["method=treesynth_balance"], "method.source is required (set method.source=... on the command line)"),
    (["train.max_steps=${nope}"], "train.max_steps: Interpolation key 'nope' not found"),
])
def test_bad_settings_name_the_key(tmp_path, overrides, problem):
    assert check_settings(compose_config(overrides, tmp_path)) == [problem]
    with pytest.raises(TreesynthError) as e:
        preflight(compose_config(overrides, tmp_path))
    assert str(e.value) == problem


def test_several_problems_are_one_line(tmp_path):
    with pytest.raises(TreesynthError) as e:
        preflight(compose_config(["data.size=abc", "seed=x"], tmp_path))
    assert str(e.value) == "seed must be an integer, got 'x'; data.size must be an integer, got 'abc'"


OPTIONS = [[f"{group}={o.stem}"] for group in ("task", "method", "llm", "model", "train", "eval", "experiment")
           for o in sorted((REPO / "conf" / group).glob("*.yaml"))]


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: o[0])
def test_every_shipped_option_passes(tmp_path, overrides):
    problems = check_settings(compose_config(overrides, tmp_path))
    if overrides == ["method=treesynth_balance"]:  # its data set is the user's to name
        assert problems == ["method.source is required (set method.source=... on the command line)"]
    else:
        assert problems == []


def test_keys_not_described_are_left_alone(tmp_path):
    cfg = compose_config(["+llm.new_knob=fast", "+llm.profile_overrides.response.max_tokens=9", "+task.notes=[a]", "+method.new_knob=abc",
                          "+train.runtime.new_knob=[1]", "+model.finetune.unknown=abc"], tmp_path)
    assert check_settings(cfg) == []


def test_numbers_pass_as_strings_and_floats_but_bools_are_not_numbers(tmp_path):
    assert check_settings(compose_config(["wandb.group=2024", "train.lr=1", "train.epochs=2"], tmp_path)) == []
    assert check_settings(compose_config(["data.size=true"], tmp_path)) == ["data.size must be an integer, got True"]


# ---- files the user points at ----------------------------------------------------------------------------
def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("empty.jsonl", "", "is empty"),
    ("blank.jsonl", "\n  \n", "is empty"),
    ("bad.jsonl", '{"a": 1}\n\n{"a": 2\n', "line 3: not valid JSON (Expecting ',' delimiter, column 8)"),
    ("list.jsonl", '{"a": 1}\n[1, 2]\n', "line 2: a JSON object per line expected, got list"),
    ("bad.json", '[{"a": 1},\n {"a": }]', "line 2: not valid JSON (Expecting value, column 8)"),
    ("empty.json", "[]", "is empty"),
    ("empty.txt", "\n", "is empty"),
])
def test_bad_input_files_say_file_and_line(tmp_path, name, text, problem):
    path = _file(tmp_path, name, text)
    with pytest.raises(TreesynthError) as e:
        check_input_file(path, f"method.file={path}")
    assert str(e.value) == f"method.file={path} {problem}"


def test_good_input_files_pass(tmp_path):
    check_input_file(_file(tmp_path, "ok.jsonl", '{"a": 1}\n\n{"a": 2}'), "method.file")
    check_input_file(_file(tmp_path, "tree.json", '{"nodes": {"0": {}}}'), "method.tree")
    check_input_file(_file(tmp_path, "personas.txt", "a chef\na pilot\n"), "method.persona_file")
    gz = tmp_path / "rows.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"a": 1}\n'))
    check_input_file(gz, "method.file")
    gz.write_bytes(gzip.compress(b'{"a": 1}\nnope\n'))
    with pytest.raises(TreesynthError, match="line 2: not valid JSON"):
        check_input_file(gz, "method.file")


@pytest.mark.parametrize(("overrides", "key"), [
    (["method=human", "method.file=MISSING"], "method.file"),
    (["method=evol_instruct", "method.seed_file=MISSING"], "method.seed_file"),
    (["method=persona_hub", "method.persona_file=MISSING"], "method.persona_file"),
    (["method=treesynth_balance", "method.source=MISSING"], "method.source"),
    (["method=treesynth_balance", "method.source=GOOD", "method.tree=MISSING"], "method.tree"),
])
def test_every_method_input_file_is_checked(tmp_path, overrides, key):
    good = _file(tmp_path, "data.jsonl", '{"prompt": "p", "completion": "c"}\n')
    overrides = [o.replace("MISSING", str(tmp_path / "nope.jsonl")).replace("GOOD", str(good)) for o in overrides]
    with pytest.raises(TreesynthError) as e:
        preflight(compose_config(overrides, tmp_path))
    assert str(e.value) == f"{key}={tmp_path / 'nope.jsonl'} does not exist"


def test_data_dir_must_exist_also_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TREESYNTH_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(TreesynthError, match=r"^data.dir=.*typo is not a directory"):
        preflight(compose_config([], tmp_path))
    preflight(compose_config([f"data.dir={BENCH}"], tmp_path))


def test_the_task_files_under_data_dir_are_checked(tmp_path):
    root = shutil.copytree(BENCH, tmp_path / "data")
    (root / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"\n')
    with pytest.raises(TreesynthError) as e:
        preflight(compose_config([f"data.dir={root}", "task=gsm8k"], tmp_path))
    assert str(e.value).startswith(f"{root / 'gsm8k' / 'train.jsonl'} (under data.dir) line 2: not valid JSON")
    (root / "gsm8k" / "test.jsonl").write_text("")  # a benchmark's test set (decontamination, evaluation)
    with pytest.raises(TreesynthError, match="test.jsonl \\(under data.dir\\) is empty"):
        preflight(compose_config([f"data.dir={root}", "task=gsm8k", "task.human=null"], tmp_path))


# ---- write failures: one line naming the path, no artifact taken as finished ----------------------------
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_failure_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")
    monkeypatch.setattr(tio.os, "fsync", _enospc)
    with pytest.raises(WriteFailed) as e:
        atomic_write_bytes(path, b"new")
    assert str(e.value) == f"cannot write {path}: No space left on device"
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_appender_on_a_full_disk_leaves_a_torn_line_that_is_cut_off(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    with JsonlAppender(path) as log:
        log.append({"i": 0})
        real_write, calls = os.write, []

        def short_then_full(fd, data):  # the kernel's behaviour when the disk fills mid-line
            calls.append(1)
            if len(calls) == 1:
                return real_write(fd, bytes(data[:3]))
            _enospc()

        monkeypatch.setattr(tio.os, "write", short_then_full)
        with pytest.raises(WriteFailed, match=f"cannot write {path}: No space left on device"):
            log.append({"i": 1})
    monkeypatch.undo()
    assert read_jsonl(path) == [{"i": 0}]
    with JsonlAppender(path) as log:
        log.append({"i": 2})
    assert read_jsonl(path) == [{"i": 0}, {"i": 2}] and path.read_text().endswith("}\n")


@pytest.mark.parametrize("fails", ["output", "stage.json", "library"])
def test_a_stage_whose_writes_fail_is_not_finished_and_a_rerun_redoes_it(tmp_path, monkeypatch, fails):
    cfg = compose_config(["stages=[synthesize]"], tmp_path)
    runs = []

    def body(ctx):
        runs.append(1)
        tio.atomic_write_json(ctx.dir / "data.jsonl", {"rows": 1})
        if len(runs) == 1 and fails == "library":  # a writer with no errno (torch.save, SQLite)
            monkeypatch.setattr(tio, "filesystem_problem", lambda where: "No space left on device")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return {"ok": 1}

    real_replace = os.replace

    def replace(src, dst):
        if len(runs) == 1 and Path(dst).name == {"output": "data.jsonl", "stage.json": DONE_FILE}.get(fails):
            _enospc()
        return real_replace(src, dst)

    monkeypatch.setattr(pipeline, "_entry", lambda stage: body)
    monkeypatch.setattr(tio.os, "replace", replace)
    out = stage_dir(cfg, "synthesize")
    with pytest.raises(WriteFailed) as e:
        run_stage(cfg, "synthesize")
    assert "\n" not in str(e.value) and str(out) in str(e.value) and "No space left on device" in str(e.value)
    assert not (out / DONE_FILE).exists() and not list(out.glob(".*.tmp"))
    monkeypatch.setattr(tio, "filesystem_problem", lambda where: None)
    assert run_stage(cfg, "synthesize")["ok"] == 1 and len(runs) == 2  # redone, not reused
    assert (out / DONE_FILE).exists()
    assert run_stage(cfg, "synthesize")["ok"] == 1 and len(runs) == 2  # now finished: reused


def test_other_errors_are_not_taken_for_write_failures(tmp_path, monkeypatch):
    cfg = compose_config(["stages=[synthesize]"], tmp_path)
    monkeypatch.setattr(pipeline, "_entry", lambda stage: lambda ctx: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_stage(cfg, "synthesize")


def test_real_synthesis_whose_parquet_write_fails_resumes_on_rerun(tmp_path, monkeypatch):
    cfg = compose_config(SCRIPTED, tmp_path)
    real_replace = os.replace
    monkeypatch.setattr(tio.os, "replace",
                        lambda src, dst: _enospc() if Path(dst).name == "data.parquet" else real_replace(src, dst))
    out = stage_dir(cfg, "synthesize")
    with pytest.raises(WriteFailed, match=f"cannot write {out / 'data.parquet'}: No space left on device"):
        run_stage(cfg, "synthesize")
    assert not (out / DONE_FILE).exists() and (out / "responses.jsonl").exists()
    monkeypatch.undo()
    metrics = run_stage(cfg, "synthesize")
    assert metrics["records"] == 3 and metrics["llm"]["calls"] == 0  # resumed: every answer came from the cache
    assert len(read_jsonl(out / "data.jsonl")) == 3 and (out / DONE_FILE).exists()


# ---- real filesystems: a full tmpfs and a read-only mount, in a private mount namespace -----------------
def _namespace() -> list[str] | None:
    """unshare's command for a private mount namespace where this process may mount, else None."""
    if shutil.which("unshare") is None:
        return None
    for cmd in (["unshare", "--mount"], ["unshare", "--mount", "--map-root-user"]):  # root; user namespaces
        probe = subprocess.run([*cmd, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return cmd
    return None


def _in_namespace(script: str, tmp_path: Path) -> dict[str, str]:
    """Run a shell script in its own mount namespace (its mounts vanish with it); `RUN name args` runs
    run.py and records its exit code and stderr, returned by name."""
    cmd = _namespace()
    if cmd is None:
        pytest.skip("no private mount namespace here (needs root or user namespaces)")
    run = f"{sys.executable} {REPO / 'run.py'} hydra.run.dir={tmp_path / 'hydra'} {' '.join(SCRIPTED)}"
    prelude = (f'RUN() {{ n=$1; shift; rc=0; {run} "$@" >/dev/null 2>{tmp_path}/$n.err || rc=$?; '
               f'echo $rc >{tmp_path}/$n.rc; }}\n')
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*cmd, "sh", "-ec", prelude + script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {p.stem: p.read_text().strip() for p in tmp_path.glob("*.rc")} | \
        {f"{p.stem}.err": p.read_text() for p in tmp_path.glob("*.err")}


def test_read_only_artifacts_root_is_one_line_before_anything_runs(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    res = _in_namespace(f"mount --bind {root} {root}; mount -o remount,bind,ro {root}\n"
                        f"RUN ro paths.artifacts={root}\n", tmp_path)
    assert res["ro"] == "2", res["ro.err"]
    assert res["ro.err"] == f"error: paths.artifacts: cannot write {root}: Read-only file system " \
                            "(point it at a writable folder)\n"


def test_disk_full_mid_stage_then_rerun_after_freeing_space(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    res = _in_namespace(textwrap.dedent(f"""
        mount -t tmpfs -o size=2m tmpfs {root}
        dd if=/dev/zero of={root}/filler bs=4k 2>/dev/null || true   # fill the disk up
        truncate -s -12k {root}/filler                                # leave room for the preflight probe only
        RUN full paths.artifacts={root}
        find {root} -name stage.json > {tmp_path}/done_after_full.txt
        find {root} -name '.*.tmp' > {tmp_path}/tmp_after_full.txt
        rm {root}/filler
        RUN rerun paths.artifacts={root}
        find {root} -name stage.json > {tmp_path}/done_after_rerun.txt
        find {root} -name data.jsonl -exec wc -l {{}} + > {tmp_path}/rows.txt
    """), tmp_path)
    err = res["full.err"]
    assert res["full"] == "2" and err.count("\n") == 1, err
    assert re.match(f"error: cannot write (under )?{root}/.*No space left on device", err), err
    assert (tmp_path / "done_after_full.txt").read_text() == ""  # the stage is not marked finished
    assert (tmp_path / "tmp_after_full.txt").read_text() == ""  # and no temp file is left behind
    assert res["rerun"] == "0", res["rerun.err"]
    assert (tmp_path / "done_after_rerun.txt").read_text().strip().endswith("/stage.json")
    assert (tmp_path / "rows.txt").read_text().split()[0] == "3"
