"""`embedded` backend: a local transformers model (default SmolLM2-135M-Instruct, CPU or GPU).

Concurrent `complete` calls are micro-batched into `model.generate` calls on one worker thread.
Sampling is done by our own logits processor, not by `generate`: per row, temperature, top-p and
Gumbel-max noise drawn from a generator seeded by (request seed, step), with `generate` run
greedily. The argmax of the noisy logits is then an exact sample whose randomness depends only on
the request, not on which other requests shared its batch. JSON schemas are enforced with xgrammar
(one compiled grammar per row; rows without a schema stay unconstrained).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from treesynth.errors import TreesynthError
from treesynth.llm.base import Backend, ChatRequest, Completion
from treesynth.llm.batcher import MicroBatcher, parse_runtime
from treesynth.models import EMBEDDED_ALIASES, EMBEDDED_NAME, resolve_model_path

log = logging.getLogger("treesynth")

PAD_TOKEN = "<|im_end|>"
_STEP_BITS = 24  # steps per request seed before the (seed, step) generator seeds could collide


def step_seed(seed: int, step: int) -> int:
    """The generator seed for one decode step of one request."""
    return ((seed & 0xFFFFFFFF) << _STEP_BITS) | (step & ((1 << _STEP_BITS) - 1))


def sample_rows(
    scores: torch.Tensor, temperatures: list[float], top_ps: list[float], seeds: list[int], step: int
) -> torch.Tensor:
    """Per row: temperature, top-p, then Gumbel noise, so that argmax(result) is a sample.
    Rows with temperature 0 keep their raw scores (greedy). Masked (-inf) logits stay -inf."""
    scores = scores.float()
    rows = [i for i, t in enumerate(temperatures) if t > 0]
    if not rows:
        return scores
    idx = torch.tensor(rows, device=scores.device)
    temps = torch.tensor([temperatures[i] for i in rows], device=scores.device).unsqueeze(1)
    logits = scores[idx] / temps
    top_p = torch.tensor([top_ps[i] for i in rows], device=scores.device).unsqueeze(1)
    if bool((top_p < 1).any()):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    # Noise on CPU from a per-(seed, step) generator: identical on every device and batch layout.
    vocab = logits.shape[-1]
    noise = torch.empty(len(rows), vocab)
    for k, i in enumerate(rows):
        g = torch.Generator().manual_seed(step_seed(seeds[i], step))
        u = torch.rand(vocab, generator=g).clamp_(min=1e-20, max=1 - 1e-7)
        noise[k] = -torch.log(-torch.log(u))
    scores[idx] = logits + noise.to(scores.device)
    return scores


class _RowSampler(LogitsProcessor):
    """Grammar mask (rows with a schema), then per-row sampling. One instance per generate call."""

    def __init__(self, requests: list[ChatRequest], grammars: list[Any], prompt_len: int, vocab_size: int):
        self.requests = requests
        self.prompt_len = prompt_len
        self.grammar_rows = [i for i, g in enumerate(grammars) if g is not None]
        self.matchers: dict[int, Any] = {}
        self.bitmask = None
        if self.grammar_rows:
            import xgrammar as xgr

            self.matchers = {i: xgr.GrammarMatcher(grammars[i]) for i in self.grammar_rows}
            self.bitmask = xgr.allocate_token_bitmask(len(requests), vocab_size)
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        if self.matchers:
            scores = self._mask(input_ids, scores, step)
        return sample_rows(
            scores,
            [r.temperature for r in self.requests],
            [r.top_p for r in self.requests],
            [r.seed for r in self.requests],
            step,
        )

    def _mask(self, input_ids: torch.Tensor, scores: torch.Tensor, step: int) -> torch.Tensor:
        import xgrammar as xgr

        active = []
        for i in list(self.matchers):
            m = self.matchers[i]
            # A row that generate already finished gets pad tokens, which the grammar rejects:
            # from then on the row's output is ignored, so stop constraining it.
            rejected = step > 0 and not m.is_terminated() and not m.accept_token(int(input_ids[i, -1]))
            if rejected or m.is_terminated():
                del self.matchers[i]
                continue
            m.fill_next_token_bitmask(self.bitmask, i)
            active.append(i)
        if active:
            # xgrammar masks on CPU or CUDA only (e.g. not MPS).
            work = scores if scores.device.type in ("cpu", "cuda") else scores.cpu()
            xgr.apply_token_bitmask_inplace(work, self.bitmask.to(work.device), vocab_size=self.vocab_size, indices=active)
            scores = work.to(scores.device)
        return scores


class _RowStop(StoppingCriteria):
    """Per-row stop: its own max_tokens, or one of its stop strings at the end of its text
    (eos is handled by generate itself)."""

    def __init__(self, requests: list[ChatRequest], prompt_len: int, tokenizer: Any):
        self.requests = requests
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.prompt_len
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i, r in enumerate(self.requests):
            if n >= r.max_tokens:
                done[i] = True
            elif r.stop:
                # A stop string of L characters spans at most L tokens (+1 for a split byte sequence).
                k = min(n, max(map(len, r.stop)) + 1)
                tail = self.tokenizer.decode(input_ids[i, -k:], skip_special_tokens=False)
                done[i] = any(s in tail for s in r.stop)
        return done


@dataclass
class _Runtime:  # conf/llm/embedded.yaml holds the values (parse_runtime requires each)
    batch_size: int
    device: str
    max_wait_ms: float


class _Loaded:
    """A loaded model with its tokenizer and grammar compiler; shared by every backend in the process
    that names the same weights and device (generator and teacher often do)."""

    def __init__(self, path: str, device: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path)
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
            self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        except OSError as e:
            raise TreesynthError(f"cannot load model {path!r} ({str(e).splitlines()[0]}); set llm.model to a local HF dir") from e
        tok.padding_side = "left"
        vocab = tok.get_vocab()
        if tok.pad_token is None:
            tok.pad_token = PAD_TOKEN if PAD_TOKEN in vocab else tok.eos_token
        eos = {tok.eos_token_id, tok.pad_token_id, vocab.get(PAD_TOKEN)}
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.tok = tok
        self._compiler: Any = None
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def grammar(self, schema: dict) -> Any:
        """Compiled grammar for a schema, cached by its canonical JSON."""
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            if key in self._grammars:
                return self._grammars[key]
            import xgrammar as xgr

            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tok, vocab_size=self.lm.config.vocab_size, stop_token_ids=self.eos_ids
                )
                self._compiler = xgr.GrammarCompiler(info)
            try:
                # any_whitespace=False: otherwise a small model can emit whitespace forever.
                g = self._compiler.compile_json_schema(key, any_whitespace=False)
            except Exception as e:
                raise TreesynthError(f"JSON schema does not compile ({str(e).splitlines()[0][:200]}); fix the schema") from e
            self._grammars[key] = g
            return g


_LOADED: dict[tuple[str, str], _Loaded] = {}
_LOADED_LOCK = threading.Lock()


def _load(path: str, device: str) -> _Loaded:
    with _LOADED_LOCK:
        if (path, device) not in _LOADED:
            _LOADED[(path, device)] = _Loaded(path, device)
        return _LOADED[(path, device)]


class EmbeddedBackend(Backend):
    def __init__(self, cfg: dict):
        name = str(cfg.get("model") or "embedded")
        # All aliases of the embedded model share one cache identity.
        self.model = EMBEDDED_NAME if name in EMBEDDED_ALIASES else name
        rt = parse_runtime(_Runtime, cfg)
        self.device = rt.device if rt.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self._path = resolve_model_path(name)
        self.batcher: MicroBatcher[ChatRequest, Completion] = MicroBatcher(
            self._run_batch, rt.batch_size, rt.max_wait_ms, name="embedded-llm"
        )
        self.generated_tokens = 0
        self.generate_seconds = 0.0

    def loaded(self) -> _Loaded:
        """The model, loaded on first use (on the worker thread: building the backend stays cheap)."""
        return _load(self._path, self.device)

    # -- one batch on the worker thread ---------------------------------------------------------
    def _run_batch(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        m = self.loaded()
        tok, lm = m.tok, m.lm
        results: list[Completion | BaseException | None] = [None] * len(requests)
        grammars: list[Any] = []
        for i, r in enumerate(requests):
            try:
                grammars.append(m.grammar(r.json_schema) if r.json_schema else None)
            except TreesynthError as e:
                results[i] = e
                grammars.append(None)
        rows = [i for i, res in enumerate(results) if res is None]
        if not rows:
            return results  # type: ignore[return-value]
        reqs = [requests[i] for i in rows]
        texts = [tok.apply_chat_template(r.chat(), add_generation_prompt=True, tokenize=False) for r in reqs]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        gen_cfg = GenerationConfig(
            do_sample=False,  # the sampling happens in _RowSampler (Gumbel-max)
            max_new_tokens=max(r.max_tokens for r in reqs),
            eos_token_id=m.eos_ids,
            pad_token_id=tok.pad_token_id,
        )
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.generate(
                **enc,
                generation_config=gen_cfg,
                logits_processor=LogitsProcessorList(
                    [_RowSampler(reqs, [grammars[i] for i in rows], prompt_len, lm.config.vocab_size)]
                ),
                stopping_criteria=[_RowStop(reqs, prompt_len, tok)],
            )
        dt = time.perf_counter() - t0
        self.generate_seconds += dt
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        for k, (i, r) in enumerate(zip(rows, reqs, strict=True)):
            results[i] = self._finish(m, out[k, prompt_len:].tolist(), r, int(prompt_tokens[k]))
        log.debug("embedded batch of %d: %d steps in %.2fs", len(reqs), out.shape[1] - prompt_len, dt)
        return results  # type: ignore[return-value]

    def _finish(self, m: _Loaded, ids: list[int], r: ChatRequest, prompt_tokens: int) -> Completion:
        """Trim a row's generated ids at eos or its first stop string; set finish_reason."""
        eos = set(m.eos_ids)
        end = next((j for j, t in enumerate(ids) if t in eos), len(ids))
        # Rows that stopped early are padded with eos by generate; past max_tokens nothing counts.
        ids = ids[: min(end, r.max_tokens)]
        self.generated_tokens += len(ids)
        text = m.tok.decode(ids, skip_special_tokens=True)
        cuts = [p for s in r.stop if (p := text.find(s)) >= 0]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        else:
            reason = "length" if len(ids) >= r.max_tokens else "stop"
        return Completion(text=text, finish_reason=reason, prompt_tokens=prompt_tokens, completion_tokens=len(ids))

    async def complete(self, request: ChatRequest) -> Completion:
        return await self.batcher.submit(request)

    async def health_check(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.loaded)

    async def aclose(self) -> None:
        self.batcher.close()
