"""`vllm` backend: the vLLM offline engine (`vllm.LLM`) in this process, for GPUs.

Concurrent `complete` calls are micro-batched (the same batcher as the embedded backend) into one
`LLM.chat` call with per-request SamplingParams (seed, temperature, top_p, max_tokens, stop) and,
for schema requests, vLLM's structured output. vLLM is imported lazily: it is an optional extra.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from treesynth.errors import TreesynthError
from treesynth.llm.base import Backend, ChatRequest, Completion
from treesynth.llm.batcher import MicroBatcher, parse_runtime
from treesynth.models import EMBEDDED_ALIASES, EMBEDDED_NAME, resolve_model_path

log = logging.getLogger("treesynth")


@dataclass
class _Runtime:  # conf/llm/vllm.yaml holds the values (parse_runtime requires each)
    batch_size: int
    max_wait_ms: float
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    dtype: str


def structured_output_kwargs(vllm_sampling_params: Any, schema: dict) -> dict[str, Any]:
    """SamplingParams kwargs for JSON-schema decoding across vLLM versions:
    `structured_outputs=StructuredOutputsParams(json=...)` (>= 0.10.2; the only form since 0.12) or
    `guided_decoding=GuidedDecodingParams(json=...)` (older)."""
    if hasattr(vllm_sampling_params, "StructuredOutputsParams"):
        return {"structured_outputs": vllm_sampling_params.StructuredOutputsParams(json=schema)}
    if hasattr(vllm_sampling_params, "GuidedDecodingParams"):
        return {"guided_decoding": vllm_sampling_params.GuidedDecodingParams(json=schema)}
    raise TreesynthError("this vLLM version has neither StructuredOutputsParams nor GuidedDecodingParams; install vllm>=0.6")


class VLLMBackend(Backend):
    def __init__(self, cfg: dict):
        try:
            import vllm
            import vllm.sampling_params as vsp
        except ImportError as e:
            raise TreesynthError(
                f"llm=vllm needs the vLLM package ({e}); install it with `pip install -e .[vllm]` on a GPU machine"
            ) from e
        name = str(cfg.get("model") or "")
        if not name:
            raise TreesynthError("llm.model is empty; set llm.model=<hub id or local dir> for the vllm backend")
        self.model = EMBEDDED_NAME if name in EMBEDDED_ALIASES else name
        rt = parse_runtime(_Runtime, cfg)
        self._vsp = vsp
        self._sampling_cls = vllm.SamplingParams
        kwargs: dict[str, Any] = {
            "model": resolve_model_path(name),
            "tensor_parallel_size": rt.tensor_parallel_size,
            "gpu_memory_utilization": rt.gpu_memory_utilization,
            "dtype": rt.dtype,
        }
        if rt.max_model_len:
            kwargs["max_model_len"] = rt.max_model_len
        log.info("starting vLLM engine for %s (tp=%d)", name, rt.tensor_parallel_size)
        self._engine = vllm.LLM(**kwargs)
        self.batcher: MicroBatcher[ChatRequest, Completion] = MicroBatcher(
            self._run_batch, rt.batch_size, rt.max_wait_ms, name="vllm-llm"
        )

    def sampling_params(self, r: ChatRequest) -> Any:
        extra = structured_output_kwargs(self._vsp, r.json_schema) if r.json_schema else {}
        return self._sampling_cls(
            seed=r.seed,
            temperature=r.temperature,
            top_p=r.top_p,
            max_tokens=r.max_tokens,
            stop=list(r.stop) or None,
            **extra,
        )

    def _run_batch(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        outs = self._engine.chat(
            [r.chat() for r in requests],
            sampling_params=[self.sampling_params(r) for r in requests],
            use_tqdm=False,
        )
        results: list[Completion | BaseException] = []
        for o in outs:
            c = o.outputs[0]
            if c.finish_reason not in ("stop", "length"):  # e.g. "abort": the engine dropped it
                results.append(Completion(text="", finish_reason="error", error=f"vLLM finish_reason={c.finish_reason}"))
                continue
            results.append(
                Completion(
                    text=c.text,
                    finish_reason="length" if c.finish_reason == "length" else "stop",
                    prompt_tokens=len(o.prompt_token_ids or []),
                    completion_tokens=len(c.token_ids),
                )
            )
        return results

    async def complete(self, request: ChatRequest) -> Completion:
        return await self.batcher.submit(request)

    async def aclose(self) -> None:
        self.batcher.close()
        self._engine = None
