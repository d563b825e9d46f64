"""The settings of conf/ as dataclasses: one per config group (one per option where the options of a group
have different keys), fields named and nested as in the YAML. Types and ranges only, never a value: the
values live in the YAML (treesynth/settings/__init__.py says why)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal


def bound(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None) -> Any:
    """A numeric field's range (for lists and mappings: every value's)."""
    return field(metadata={k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None})


def one_of(choices: Callable[[], Iterable[str]]) -> Any:
    """A string field whose choices another registry owns (asked when a value is checked, not at import)."""
    return field(metadata={"choices": choices})


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes Annotated metadata
class OptionBy:
    """For `Annotated[Base, OptionBy(key, options)]`: a group whose options differ in their keys; the node's
    own `key` (llm.backend, method.name, train.name) picks the dataclass; an unknown one is checked as Base."""

    key: str
    options: dict[str, type]


# ---- data, progress, diversity, paths, wandb (conf/config.yaml) -------------------------------------------
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
class DataRuntime:
    chunk: int = bound(ge=1)


@dataclass
class Data:
    size: int = bound(ge=1)
    dir: str | None
    hygiene: Hygiene
    verify: Verify
    runtime: DataRuntime


@dataclass
class ProgressSettings:
    every_s: float = bound(gt=0)
    first_s: float = bound(gt=0)
    bar: Literal["auto", "always", "never"]


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
class Price:
    input: float | None = bound(ge=0)
    output: float | None = bound(ge=0)


@dataclass
class LLMRuntime:
    """What every backend's runtime has in common: nothing yet (each option adds its own knobs)."""


@dataclass
class LLM:
    backend: str
    model: str
    profile: str
    profile_overrides: dict[str, Any]
    budget_usd: float | None = bound(ge=0)  # money keys: read by the LLM layer, never part of an artifact key
    price: Price
    runtime: LLMRuntime


@dataclass
class EmbeddedRuntime(LLMRuntime):
    batch_size: int = bound(ge=1)
    device: str
    max_wait_ms: float = bound(ge=0)


@dataclass
class EmbeddedLLM(LLM):
    runtime: EmbeddedRuntime


@dataclass
class BatchAPI:
    window_s: float = bound(gt=0)
    max_requests: int = bound(ge=1)
    poll_s: float = bound(gt=0)
    completion_window: str
    line_retries: int = bound(ge=0)
    discount: float = bound(ge=0, lt=1)


@dataclass
class OpenAIRuntime(LLMRuntime):
    mode: Literal["online", "batch"]
    batch: BatchAPI
    base_urls: list[str]
    max_concurrency: int = bound(ge=1)
    timeout_s: float = bound(gt=0)
    max_retries: int = bound(ge=0)
    answer_retries: int = bound(ge=0)
    backoff_base_s: float = bound(ge=0)
    backoff_max_s: float = bound(ge=0)
    cooldown_429_s: float = bound(ge=0)
    health_timeout_s: float = bound(gt=0)


@dataclass
class OpenAILLM(LLM):
    prices: dict[str, Price]
    api_key_env: str | None
    schema_style: Literal["json_schema", "json_object"]
    runtime: OpenAIRuntime


@dataclass
class VLLMRuntime(LLMRuntime):
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
class ScriptedRuntime(LLMRuntime):
    delay_s: float = bound(ge=0)


@dataclass
class ScriptedLLM(LLM):
    free_text: str
    runtime: ScriptedRuntime


LLMGroup = Annotated[LLM, OptionBy("backend", {"embedded": EmbeddedLLM, "openai": OpenAILLM, "vllm": VLLMLLM,
                                               "treesynth.testing.scripted:ScriptedBackend": ScriptedLLM})]


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
class TreeTemperatures:
    pivot: float = bound(ge=0)
    leaf: float = bound(ge=0)
    criterion: float = bound(ge=0)
    coverage: float = bound(ge=0)


@dataclass
class TreeMaxTokens:
    criterion: int = bound(ge=1)
    assign: int = bound(ge=1)
    coverage: int = bound(ge=1)
    one_call: int = bound(ge=1)


@dataclass
class TreeShape:
    """What the tree builder reads (treesynth/tree/config.py: TreeConfig is this plus helpers)."""

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
    temperatures: TreeTemperatures
    max_tokens: TreeMaxTokens


@dataclass
class TreeSynthMethod(Method, TreeShape):
    infinite_weight: float = bound(gt=0)


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
    finetune: dict[str, Any]  # per-model train values, read through conf/train's interpolations (checked as train.*)


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


def _math_splits() -> list[str]:
    """`test` and the test-set variants the benchmark registry names (conf/benchmark/math.yaml)."""
    from treesynth.benchmarks import benchmark, builtin_names

    return ["test", *sorted({v for name in builtin_names() for v in benchmark(name).variants()})]


def _sandbox_modes() -> tuple[str, ...]:
    from evaluation.sandbox import SANDBOX_MODES

    return SANDBOX_MODES


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
    math_split: str = one_of(_math_splits)
    dtype: str
    code_timeout_s: float = bound(gt=0)
    code_memory_mb: int = bound(ge=1)
    sandbox: str = one_of(_sandbox_modes)
    runtime: EvalRuntime


# ---- the whole config -------------------------------------------------------------------------------------
@dataclass
class Settings:
    seed: int
    stages: list[str]
    task: Any  # the task file: checked by its own loader (treesynth/tasks: load_task)
    teacher: LLMGroup | None
    data: Data
    progress: ProgressSettings
    diversity: Diversity
    paths: Paths
    wandb: Wandb
    llm: LLMGroup
    method: MethodGroup
    model: Model
    train: TrainGroup
    eval: Eval
