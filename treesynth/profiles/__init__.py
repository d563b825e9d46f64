"""Capability profiles (`<name>.yaml` beside this module): what a generator can do, as a property of
the generator, not of the task.

`constrained` (the embedded 135M model, small local models) bounds every generated text to short ASCII and
has the teacher fill bounded JSON fields; `open` (capable models behind `openai` / `vllm`) leaves text
unbounded apart from a runaway guard and has the teacher write free text. The LLM config names its
profile (`llm.profile`: a name here, or the path of a YAML file of the same shape); `profile_for(cfg)`
returns it as a `Profile`, and `load_task` derives the task's schemas from it. Method configs take the
profile's defaults through the `${profile:...}` resolver (conf/method/treesynth.yaml), so each default is
written once, in the profile's file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from treesynth.errors import TreesynthError

HERE = Path(__file__).parent
FIELD_SIZES = ("text", "short", "optional")
RESPONSE_MODES = ("structured", "free")


@dataclass(frozen=True)
class Profile:
    name: str
    charset: str | None  # regex character-class body for generated text; None = any text
    chars: dict[str, tuple[int, int]]  # field size -> (min, max) characters
    value_charset: str | None  # the same for tree dimension and value names
    value_chars: tuple[int, int]
    prompt_criteria: bool  # generation prompts carry the task's criteria list
    samples_per_call: int
    sample_tokens: int | None  # per sample; None = derived from the bounded fields
    response_mode: str  # structured | free
    reasoning_chars: tuple[int, int] | None  # structured: bounds of the teacher's reasoning field
    answers: dict[str, dict | None]  # answer kind -> schema of a final answer (None: an enum from the task)
    final_answer_call: bool  # free: one "state only the final answer" call when the text misses the format
    response_temperature: float
    response_max_tokens: int
    response_retries: int

    def string_schema(self, lo: int, hi: int, charset: str | None = None) -> dict:
        """A string of lo..hi characters; with a charset, as one pattern (what xgrammar compiles fast)."""
        if charset:
            return {"type": "string", "pattern": f"^[{charset}]{{{lo},{hi}}}$"}
        return {"type": "string", "minLength": lo, "maxLength": hi}

    def text_schema(self, size: str = "text") -> dict:
        if size not in self.chars:
            raise TreesynthError(f"profile {self.name!r}: unknown field size {size!r}; choose from {sorted(self.chars)}")
        return self.string_schema(*self.chars[size], charset=self.charset)

    def value_schema(self) -> dict:
        return self.string_schema(*self.value_chars, charset=self.value_charset)


def _pair(v: Any, where: str) -> tuple[int, int]:
    if not (isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) for x in v) and 0 <= v[0] <= v[1]):
        raise TreesynthError(f"{where} must be [min, max] characters with 0 <= min <= max, got {v!r}")
    return int(v[0]), int(v[1])


def parse_profile(name: str, d: dict) -> Profile:
    """One entry of conf/profiles.yaml, checked; bad values -> one line naming the key."""
    where = f"profiles.{name}"
    try:
        text, values, resp = d["text"], d["values"], d["response"]
        chars = {size: _pair(text["chars"][size], f"{where}.text.chars.{size}") for size in FIELD_SIZES}
        mode = resp["mode"]
        if mode not in RESPONSE_MODES:
            raise TreesynthError(f"{where}.response.mode must be one of {RESPONSE_MODES}, got {mode!r}")
        k = int(d["samples_per_call"])
        if k < 1:
            raise TreesynthError(f"{where}.samples_per_call must be >= 1, got {k}")
        reasoning = resp.get("reasoning_chars")
        return Profile(
            name=name,
            charset=text.get("charset"),
            chars=chars,
            value_charset=values.get("charset"),
            value_chars=_pair(values["chars"], f"{where}.values.chars"),
            prompt_criteria=bool(d["prompt_criteria"]),
            samples_per_call=k,
            sample_tokens=None if d.get("sample_tokens") is None else int(d["sample_tokens"]),
            response_mode=mode,
            reasoning_chars=None if reasoning is None else _pair(reasoning, f"{where}.response.reasoning_chars"),
            answers=dict(resp.get("answers") or {}),
            final_answer_call=bool(resp["final_answer_call"]),
            response_temperature=float(resp["temperature"]),
            response_max_tokens=int(resp["max_tokens"]),
            response_retries=int(resp["retries"]),
        )
    except KeyError as e:
        raise TreesynthError(f"{where} lacks the key {e.args[0]!r} (see conf/profiles.yaml)") from None
    except (TypeError, ValueError) as e:
        raise TreesynthError(f"{where}: {e}") from None


def profile_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


@cache
def profile_data(name: str) -> dict:
    """The profile's YAML as a dict: a shipped name (constrained, open) or a path to a .yaml file."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else HERE / f"{name}.yaml"
    if not path.is_file():
        raise TreesynthError(f"unknown llm.profile {name!r}; choose from {profile_names()} or give a .yaml path")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TreesynthError(f"llm.profile {name!r}: {path} is not a YAML mapping")
    return data


def load_profile(name: str) -> Profile:
    """A shipped profile by name (or a profile YAML by path), without per-run overrides."""
    return parse_profile(str(name), profile_data(str(name)))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _llm_profile(llm_cfg: DictConfig | dict | None, where: str = "llm") -> tuple[str, dict]:
    """(name, data) of an LLM config's profile, with its `profile_overrides` applied (e.g.
    `+llm.profile_overrides.response.max_tokens=4096`)."""
    name = llm_cfg.get("profile") if llm_cfg is not None else None
    if not name:
        raise TreesynthError(f"{where}.profile is not set; choose from {profile_names()}")
    over = llm_cfg.get("profile_overrides") or {}
    over = OmegaConf.to_container(over, resolve=True) if isinstance(over, DictConfig) else dict(over)
    return str(name), _merge(profile_data(str(name)), over) if over else profile_data(str(name))


def profile_for(cfg: DictConfig, llm_cfg: DictConfig | dict | None = None) -> Profile:
    """The profile of an LLM config (default: the generator, cfg.llm)."""
    return parse_profile(*_llm_profile(cfg.llm if llm_cfg is None else llm_cfg, "llm" if llm_cfg is None else "teacher"))


def used_profiles(cfg: DictConfig) -> dict[str, Any]:
    """The profiles a synthesis reads (the generator's and the teacher's), by content: part of its key."""
    llms = {"llm": cfg.llm, **({"teacher": cfg.teacher} if cfg.get("teacher") is not None else {})}
    return {role: dict(zip(("name", "data"), _llm_profile(c, role), strict=True)) for role, c in llms.items()}


def _resolve(key: str, *, _root_: DictConfig) -> Any:
    """`${profile:treesynth.pivots}`: that key of the generator's profile (llm.profile)."""
    name, node = _llm_profile(_root_.get("llm"))
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TreesynthError(f"${{profile:{key}}}: the profile {name!r} has no {key!r}")
        node = node[part]
    return node


if not OmegaConf.has_resolver("profile"):
    OmegaConf.register_new_resolver("profile", _resolve)
