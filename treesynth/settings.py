"""A typed description of the settings in conf/: one dataclass per config group (one per option where the
options of a group have different keys), fields named and nested as in the YAML.

`check_settings(cfg)` compares a composed config with it before anything runs, so a value of the wrong
type or out of range is one line naming the key (`data.size must be an integer, got 'abc'`) instead of a
traceback minutes later. Only the keys present are checked, by type and range; keys described nowhere
here (the task, model.finetune, options added to the YAML later) are left alone. Issue #15 turns these
dataclasses into Hydra structured configs, which is why they mirror the YAML rather than the code.
"""

from __future__ import annotations

import operator
import types
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf


def bound(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None) -> Any:
    """A numeric field's range (for lists and mappings: every value's). Fields have no defaults: the
    YAML holds the values, this file only their types."""
    return field(metadata={k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None})


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes Annotated metadata
class OptionBy:
    """For `Annotated[Base, OptionBy(key, options)]`: a group whose options differ in their keys; the node's
    own `key` (llm.backend, method.name, train.name) picks the dataclass; an unknown one is checked as Base."""

    key: str
    options: dict[str, type]


# ---- data, diversity, paths, wandb (conf/config.yaml) ------------------------------------------------------
@dataclass
class Hygiene:
    enabled: bool
    dedup: bool
    near_dup_threshold: float = bound(gt=0, le=1)
    decontaminate: bool
    ngram: int = bound(ge=1)
    fields: list[str]


@dataclass
class Verify:
    enabled: bool
    kind: Literal["auto", "self_consistency", "execute"]
    k: int = bound(ge=1)
    tests: int = bound(ge=1)
    keep_untested: bool
    timeout_s: float = bound(gt=0)


@dataclass
class Data:
    size: int = bound(ge=1)
    dir: str | None
    hygiene: Hygiene
    verify: Verify


@dataclass
class DiversityRuntime:
    batch_size: int = bound(ge=1)


@dataclass
class Diversity:
    text: Literal["prompt", "completion", "both"]
    embedding_model: str
    self_bleu_sample: int = bound(ge=2)
    near_dup_threshold: float = bound(gt=0, le=1)
    tsne_sample: int = bound(ge=2)
    runtime: DiversityRuntime


@dataclass
class Paths:
    artifacts: str
    results: str


@dataclass
class Wandb:
    mode: Literal["offline", "online", "disabled"]
    project: str
    group: str | None
    name: str | None
    dir: str


# ---- llm, teacher (conf/llm/*.yaml), picked by llm.backend ------------------------------------------------
@dataclass
class LLM:
    backend: str
    model: str


@dataclass
class EmbeddedRuntime:
    batch_size: int = bound(ge=1)
    device: str
    max_wait_ms: float = bound(ge=0)


@dataclass
class EmbeddedLLM(LLM):
    runtime: EmbeddedRuntime


@dataclass
class OpenAIRuntime:
    base_urls: list[str]
    max_concurrency: int = bound(ge=1)
    timeout_s: float = bound(gt=0)
    max_retries: int = bound(ge=0)
    backoff_base_s: float = bound(ge=0)
    backoff_max_s: float = bound(ge=0)
    cooldown_429_s: float = bound(ge=0)
    health_timeout_s: float = bound(gt=0)


@dataclass
class OpenAILLM(LLM):
    api_key_env: str | None
    schema_style: Literal["json_schema", "json_object"]
    runtime: OpenAIRuntime


@dataclass
class VLLMRuntime:
    batch_size: int = bound(ge=1)
    max_wait_ms: float = bound(ge=0)
    tensor_parallel_size: int = bound(ge=1)
    gpu_memory_utilization: float = bound(gt=0, le=1)
    max_model_len: int | None = bound(ge=1)
    dtype: str


@dataclass
class VLLMLLM(LLM):
    runtime: VLLMRuntime


@dataclass
class ScriptedRuntime:
    delay_s: float = bound(ge=0)


@dataclass
class ScriptedLLM(LLM):
    free_text: str
    runtime: ScriptedRuntime


LLMGroup = Annotated[LLM, OptionBy("backend", {"embedded": EmbeddedLLM, "openai": OpenAILLM, "vllm": VLLMLLM,
                                               "scripted": ScriptedLLM})]


# ---- method (conf/method/*.yaml), picked by method.name ---------------------------------------------------
@dataclass
class Method:
    name: str
    plan_only: bool


@dataclass
class TemperatureMethod(Method):
    temperature: float = bound(ge=0)
    samples_per_call: int = bound(ge=1)


@dataclass
class EvolInstructMethod(TemperatureMethod):
    seeds: Literal["auto", "human", "temperature"]
    seed_file: str | None
    seed_pool: int = bound(ge=1)
    rounds: int = bound(ge=1)
    operations: list[str]
    copy_threshold: float = bound(gt=0, le=1)


@dataclass
class PersonaHubMethod(TemperatureMethod):
    persona_file: str | None
    pool_size: int = bound(ge=1)


@dataclass
class HumanMethod(Method):
    file: str | None


@dataclass
class TreeSynthMethod(Method):
    pivots: int = bound(ge=2)
    max_depth: int = bound(ge=0)
    max_values: int = bound(ge=1)
    max_children: int = bound(ge=1)
    max_nodes: int = bound(ge=1)
    max_calls: int = bound(ge=1)
    criterion_retries: int = bound(ge=1)
    coverage_rounds: int = bound(ge=0)
    coverage_new_values: int = bound(ge=1)
    proposal_values: int = bound(ge=2)
    criterion_mode: Literal["stepwise", "one_call"]
    fixed_first_level: bool
    samples_per_call: int = bound(ge=1)
    infinite_weight: float = bound(gt=0)
    temperatures: dict[str, float] = bound(ge=0)
    max_tokens: dict[str, int | None] = bound(ge=1)


@dataclass
class TreeSynthBalanceMethod(TreeSynthMethod):
    source: str
    tree: str | None
    target_per_leaf: int | None = bound(ge=1)


MethodGroup = Annotated[Method, OptionBy("name", {
    "temperature": TemperatureMethod, "evol_instruct": EvolInstructMethod, "persona_hub": PersonaHubMethod,
    "human": HumanMethod, "treesynth": TreeSynthMethod, "treesynth_balance": TreeSynthBalanceMethod})]


# ---- model, train, eval (conf/model, conf/train, conf/eval) -----------------------------------------------
@dataclass
class Model:
    name: str
    path: str


@dataclass
class TrainRuntime:
    logging_steps: int = bound(ge=1)
    dataloader_workers: int = bound(ge=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"]
    gradient_checkpointing: bool | Literal["auto"]
    save_steps: int = bound(ge=1)


@dataclass
class Train:
    name: str
    epochs: float = bound(ge=0)
    max_steps: int = bound(ge=-1)  # -1: train for `epochs`
    lr: float = bound(gt=0)
    lr_scheduler: str
    warmup_ratio: float = bound(ge=0)
    weight_decay: float = bound(ge=0)
    per_device_batch_size: int = bound(ge=1)
    grad_accum: int = bound(ge=1)
    max_seq_len: int = bound(ge=1)
    packing: bool
    runtime: TrainRuntime


@dataclass
class LoraAdapter:
    r: int = bound(ge=1)
    alpha: float = bound(gt=0)
    dropout: float = bound(ge=0, lt=1)
    target_modules: str | list[str]


@dataclass
class LoraTrain(Train):
    lora: LoraAdapter


TrainGroup = Annotated[Train, OptionBy("name", {"lora": LoraTrain, "full": Train})]


@dataclass
class EvalRuntime:
    batch_size: int | Literal["auto"] = bound(ge=1)
    device: str


@dataclass
class Eval:
    backend: Literal["hf", "vllm"]
    style: Literal["chat", "builtin"]
    limit: int | None = bound(ge=1)
    num_fewshot: int | None = bound(ge=0)
    apply_chat_template: bool | None
    max_gen_toks: int = bound(ge=1)
    math_split: Literal["test", "math500"]
    dtype: str
    code_timeout_s: float = bound(gt=0)
    code_memory_mb: int = bound(ge=1)
    runtime: EvalRuntime


# ---- the whole config -------------------------------------------------------------------------------------
@dataclass
class Settings:
    seed: int
    stages: list[str]
    teacher: LLMGroup | None
    data: Data
    diversity: Diversity
    paths: Paths
    wandb: Wandb
    llm: LLMGroup
    method: MethodGroup
    model: Model
    train: TrainGroup
    eval: Eval


# ---- the check --------------------------------------------------------------------------------------------
def check_settings(cfg: DictConfig) -> list[str]:
    """One line per problem: described keys left `???`, of the wrong type or out of range."""
    return _node_problems(cfg, Settings, "")


def _node_problems(node: DictConfig, cls: type, prefix: str) -> list[str]:
    hints = get_type_hints(cls, include_extras=True)
    problems = []
    for f in fields(cls):
        if f.name not in node.keys():  # (`in node` is false for a `???` value)
            continue  # not a key of this option
        path = f"{prefix}{f.name}"
        if OmegaConf.is_missing(node, f.name):
            problems.append(f"{path} is required (set {path}=... on the command line)")
            continue
        try:
            value = node[f.name]
        except Exception as e:  # an interpolation that does not resolve
            problems.append(f"{path}: {str(e).splitlines()[0]}")
            continue
        problems += _problems(path, value, hints[f.name], f.metadata)
    return problems


def _problems(path: str, value: Any, tp: Any, bounds: Any) -> list[str]:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        option = next(a for a in tp.__metadata__ if isinstance(a, OptionBy))
        if not isinstance(value, DictConfig):
            return [_wrong(path, value, args[0])]
        cls = option.options.get(str(value.get(option.key)), args[0])
        return _node_problems(value, cls, f"{path}.")
    if origin in (Union, types.UnionType):
        for t in args:
            if not _problems(path, value, t, bounds):
                return []
        # The value has the right type but a bad range: say that, not "must be X or null".
        typed = [t for t in args if _is_type(value, t)]
        return _problems(path, value, typed[0], bounds) if typed else [_wrong(path, value, tp)]
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return [] if ok else [_wrong(path, value, tp)]
    if origin is list:
        if not isinstance(value, ListConfig):
            return [_wrong(path, value, tp)]
        return [p for i, v in enumerate(value) for p in _problems(f"{path}[{i}]", v, args[0], bounds)]
    if origin is dict:
        if not isinstance(value, DictConfig):
            return [_wrong(path, value, tp)]
        return [p for k, v in value.items() for p in _problems(f"{path}.{k}", v, args[1], bounds)]
    if is_dataclass(tp):
        return _node_problems(value, tp, f"{path}.") if isinstance(value, DictConfig) else [_wrong(path, value, tp)]
    if not _is_type(value, tp):
        return [_wrong(path, value, tp)]
    if tp in (int, float) and (out := _out_of_range(value, bounds)):
        return [f"{path} must be {out}, got {value}"]
    return []


def _is_type(value: Any, tp: Any) -> bool:
    """The value's type, not its contents (a group is a mapping, a list a list; a Literal's choices are not
    a type). bool is not a number here (true must not pass as 1); a number passes as a string
    (wandb.group=2024); an integer passes as a float (train.lr=1)."""
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Annotated or origin is dict or is_dataclass(tp):
        return isinstance(value, DictConfig)
    if origin is list:
        return isinstance(value, ListConfig)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return False


_OPS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _out_of_range(value: float, bounds: Any) -> str | None:
    """None when `value` is within `bounds` (a field's metadata), else the range it must be in."""
    if all(_OPS[op][1](value, b) for op, b in bounds.items()):
        return None
    if len(bounds) == 2:  # a lower and an upper bound: interval notation
        (lo, a), (hi, b) = sorted(bounds.items(), key=lambda kv: kv[0] in ("le", "lt"))
        return f"in {'[' if lo == 'ge' else '('}{a}, {b}{']' if hi == 'le' else ')'}"
    ((op, b),) = bounds.items()
    return f"{_OPS[op][0]} {b}"


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated or is_dataclass(tp) or origin is dict:
        return "a group of settings"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in args)
    if origin is Literal:
        return ", ".join(map(str, args)) if len(args) == 1 else "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(tp, str(tp))


def _wrong(path: str, value: Any, tp: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    return f"{path} must be {_describe(tp)}, got {value!r}"
