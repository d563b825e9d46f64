"""Every default is written once, in the YAML: each shipped option, composed as run.py composes it, sets
exactly the keys its dataclass declares (treesynth/settings/schema.py), and the code reads the values the
YAML holds (no fallback of its own)."""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path

import pytest
import yaml
from conftest import CONF, REPO, compose_config
from omegaconf import OmegaConf

from treesynth.errors import TreesynthError
from treesynth.profiles import profile_for
from treesynth.settings import Hygiene, Settings, TreeShape, check_settings, load, schema, stray_keys
from treesynth.tree.config import TreeConfig

GROUPS = ("task", "method", "llm", "model", "train", "eval", "experiment")
OPTIONS = [[f"{group}={o.stem}"] for group in GROUPS for o in sorted((CONF / group).glob("*.yaml"))]
# Method defaults differ by the generator's profile (${profile:...}): each method under both profiles; every
# LLM option also as the teacher (`+llm@teacher=NAME`, the way the README names another LLM config).
OPTIONS += [[f"method={o.stem}", "llm=openai"] for o in sorted((CONF / "method").glob("*.yaml"))]
OPTIONS += [[f"+llm@teacher={o.stem}"] for o in sorted((CONF / "llm").glob("*.yaml"))]
OPTIONS += [["experiment=paper_main", "method=treesynth", "llm=openai", "task=math", "model=llama3_1_8b"]]
USER_FILE = {"treesynth_balance": "method.source=data.jsonl"}  # ??? keys the user must set


def _composed(overrides: list[str], tmp_path: Path):
    extra = [USER_FILE[o.split("=")[1]] for o in overrides if o.startswith("method=") and o.split("=")[1] in USER_FILE]
    cfg = compose_config([*overrides, *extra], tmp_path)
    profile_for(cfg)  # registers the ${profile:...} resolver, as preflight does first
    return cfg


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: " ".join(o))
def test_every_option_sets_exactly_the_declared_keys(tmp_path, overrides):
    cfg = _composed(overrides, tmp_path)
    assert stray_keys(cfg, Settings) == []  # no value the dataclasses do not declare (read by no code)
    assert check_settings(cfg) == []  # every declared field set, of its type and range (no default in code)


def test_the_dataclasses_hold_no_values():
    classes = [c for _, c in inspect.getmembers(schema, inspect.isclass) if is_dataclass(c) and c is not schema.OptionBy]
    assert len(classes) > 30
    for cls in [*classes, TreeConfig]:
        assert [f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING] == [], cls


def test_a_stray_key_and_a_missing_key_are_found(tmp_path):
    cfg = _composed(["+llm.new_knob=fast", "+method.temperatures.sample=1"], tmp_path)
    assert stray_keys(cfg, Settings) == ["llm.new_knob", "method.temperatures.sample"]
    del cfg.data.hygiene.ngram
    assert check_settings(cfg) == ["data.hygiene.ngram is missing (set +data.hygiene.ngram=... or add it to the "
                                   "option's YAML)"]


def test_load_reads_the_yaml_into_the_dataclass_or_says_which_key(tmp_path):
    cfg = _composed([], tmp_path)
    h = load(cfg.data.hygiene, Hygiene, "data.hygiene")
    assert asdict(h) == OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").data.hygiene)
    cfg.data.hygiene.ngram = "many"
    with pytest.raises(TreesynthError, match=r"^data.hygiene.ngram must be an integer, got 'many'$"):
        load(cfg.data.hygiene, Hygiene, "data.hygiene")
    del cfg.data.hygiene.ngram
    with pytest.raises(TreesynthError, match=r"^data.hygiene.ngram is missing"):
        load(cfg.data.hygiene, Hygiene, "data.hygiene")


def _yaml_tree_settings(profile: str) -> dict:
    """conf/method/treesynth.yaml with its ${profile:KEY} values looked up in the profile's file by hand."""
    prof = yaml.safe_load((REPO / "treesynth" / "profiles" / f"{profile}.yaml").read_text())

    def lookup(key: str):
        node = prof
        for part in key.split("."):
            node = node[part]
        return node

    def resolve(v):
        if isinstance(v, dict):
            return {k: resolve(x) for k, x in v.items()}
        m = re.fullmatch(r"\$\{profile:([\w.]+)\}", str(v))
        return lookup(m.group(1)) if m else v

    return resolve(yaml.safe_load((CONF / "method" / "treesynth.yaml").read_text()))


@pytest.mark.parametrize(("llm", "profile"), [("embedded", "constrained"), ("openai", "open")])
def test_the_tree_builder_uses_exactly_the_yaml_and_the_profile(tmp_path, llm, profile):
    cfg = _composed(["method=treesynth", f"llm={llm}"], tmp_path)
    t = TreeConfig.from_cfg(cfg.method)
    expected = _yaml_tree_settings(profile)
    assert asdict(t) == {f.name: expected[f.name] for f in fields(TreeShape)}
