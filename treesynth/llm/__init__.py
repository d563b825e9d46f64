"""LLM layer: `build_llm(cfg.llm)` returns an `LLM` (cache + accounting + schema validation) around
one backend chosen by `cfg.llm.backend`, in batch mode (`llm.runtime.mode=batch`, treesynth/llm/batch.py)
wrapped so that requests without dependencies go through the provider's Batch API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from treesynth.llm.admission import admitted_first
from treesynth.llm.base import Backend, ChatRequest, Completion, LLMError, online_requests
from treesynth.llm.cache import RequestCache
from treesynth.llm.client import (
    LLM,
    Budget,
    BudgetExceeded,
    LLMStats,
    Price,
    derive_seed,
    parse_json,
    price_of,
)
from treesynth.registry import Registry

# backend name -> "module:Class"; each class takes the llm config as a plain dict. `llm.backend` may also
# be a "module:Class" reference: conf/llm/scripted.yaml names the test double of treesynth/testing/ so.
BACKENDS = Registry("llm backend", "llm=... or llm.backend=...", {
    "embedded": "treesynth.llm.embedded:EmbeddedBackend",
    "openai": "treesynth.llm.openai_compat:OpenAIBackend",
    "vllm": "treesynth.llm.vllm_engine:VLLMBackend",
}, references=True)


def build_backend(llm_cfg: DictConfig | dict, cache_dir: str | Path | None = None) -> Backend:
    """The backend for `llm.backend`; in batch mode its batch checkpoint lives under `cache_dir`."""
    cfg: dict[str, Any] = OmegaConf.to_container(llm_cfg, resolve=True) if isinstance(llm_cfg, DictConfig) else dict(llm_cfg)
    backend = BACKENDS.load(cfg.get("backend"))(cfg)
    if (cfg.get("runtime") or {}).get("mode", "online") == "online":
        return backend
    from treesynth.llm.batch import batch_mode  # the HTTP stack is imported only when asked for

    return batch_mode(backend, cfg, cache_dir)


def build_llm(llm_cfg: DictConfig | dict, cache_dir: str | Path | None = None, budget: Budget | None = None) -> LLM:
    """The generator (or teacher) LLM with a persistent cache under `cache_dir` (None: no cache), priced
    from its config (`price_of`) and held to `budget` when one is given."""
    price = price_of(llm_cfg if isinstance(llm_cfg, DictConfig) else OmegaConf.create(llm_cfg))
    backend = build_backend(llm_cfg, cache_dir)
    cache = RequestCache(Path(cache_dir) / "requests.sqlite") if cache_dir else None
    return LLM(backend, cache, price=price, budget=budget)


__all__ = [
    "BACKENDS",
    "LLM",
    "Budget",
    "BudgetExceeded",
    "Price",
    "Backend",
    "admitted_first",
    "ChatRequest",
    "Completion",
    "LLMError",
    "LLMStats",
    "RequestCache",
    "build_backend",
    "build_llm",
    "derive_seed",
    "online_requests",
    "parse_json",
    "price_of",
]
