"""`LLM`: the public surface every method uses. Wraps a backend with the request cache, JSON-schema
validation (retried with a derived seed, then recorded as an error, never a crash), and accounting.

An unusable answer (JSON that does not validate, or text cut at max_tokens) is first asked again with
the SAME request `backend.answer_retries` times (0 unless the backend sets it: an HTTP backend's answer
can be damaged by the server or on the way, and the same request then gets the answer a fault-free run
got; an in-process model would only repeat itself). Only then does a JSON request move on to derived
seeds, which sample a different answer. A backend may also expose `transport_stats` (an object with
`as_dict()`: HTTP retries, 429s, 5xx, timeouts), which `LLMStats.as_dict()` reports with its own counts.

Money: a `Price` ($ per million input/output tokens; in batch mode the Batch API's discount on the
requests it serves) turns the token counts into `cost_usd`, what is paid; a shared
`Budget` refuses a backend call (cache hits are free) that could take the spend past its limit: each call
reserves its worst case (prompt characters / 4 + max_tokens) until its real usage is known, so the
spend never exceeds the limit, and calls already in flight finish (and are cached) before the stage stops."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import inspect
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import jsonschema
import jsonschema_rs
import orjson
from tqdm.auto import tqdm

from treesynth.errors import TreesynthError
from treesynth.llm.admission import AdmissionGate
from treesynth.llm.base import Backend, ChatRequest, Completion, LLMError, batchable
from treesynth.llm.cache import RequestCache


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens online. In batch mode a request the Batch API serves (`batchable`:
    leaf samples, teacher answers) is paid at (1 - batch_discount) of that; tree building stays online."""

    input: float = 0.0
    output: float = 0.0
    batch_discount: float = 0.0  # llm.runtime.batch.discount when llm.runtime.mode=batch, else 0

    def cost(self, prompt_tokens: float, completion_tokens: float, batched: bool = False) -> float:
        online = (prompt_tokens * self.input + completion_tokens * self.output) / 1e6
        return online * (1.0 - self.batch_discount) if batched else online

    def batched(self, request: ChatRequest) -> bool:
        """Whether `request` is paid at the batch price."""
        return self.batch_discount > 0 and batchable(request)

    def answer_cost(self, request: ChatRequest, c: Completion) -> float:
        """What the answer `c` to `request` is paid."""
        return self.cost(c.prompt_tokens, c.completion_tokens, self.batched(request))

    def worst_case(self, request: ChatRequest) -> float:
        """An upper estimate of one call (about 4 characters per token; the full max_tokens answer)."""
        chars = sum(len(content) for _, content in request.messages)
        return self.cost(chars // 4 + 16, request.max_tokens, self.batched(request))

    def as_dict(self) -> dict[str, float]:
        """Per million tokens, with the batch discount when there is one."""
        out = {"input": self.input, "output": self.output}
        return {**out, "batch_discount": self.batch_discount} if self.batch_discount else out


class BudgetExceeded(TreesynthError):
    """The next call could take the spend past llm.budget_usd (run.py prints the one line)."""


class Budget:
    """One spending limit shared by the generator and the teacher of a stage. `spent_before` is what
    earlier runs of the same artifact spent (their answers are cached and cost nothing now)."""

    def __init__(self, limit_usd: float | None, spent_before: float = 0.0):
        self.limit = limit_usd
        self.spent_before = spent_before
        self.spent = 0.0  # this process
        self.reserved = 0.0
        self.refused = 0

    @property
    def total(self) -> float:
        return self.spent_before + self.spent

    def reserve(self, amount: float) -> None:
        if self.limit is not None and self.total + self.reserved + amount > self.limit:
            self.refused += 1
            raise BudgetExceeded(
                f"budget llm.budget_usd={self.limit:g} reached: ${self.total:.4f} spent, the next call "
                f"could cost up to ${amount:.4f}; rerun with a larger budget to resume from the checkpoint")
        self.reserved += amount

    def settle(self, reserved: float, cost: float) -> None:
        self.reserved -= reserved
        self.spent += cost


@dataclass
class LLMStats:
    requests: int = 0  # requests asked of the LLM layer
    calls: int = 0  # requests that reached the backend (cache misses, incl. JSON retries)
    cache_hits: int = 0
    errors: int = 0  # requests that ended in error after retries
    invalid_json: int = 0  # schema responses that did not validate (each retry counted)
    truncated: int = 0
    answer_retries: int = 0  # unusable answers asked again with the same request
    json_retries: int = 0  # invalid JSON asked again with a derived seed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # backend calls priced with the LLM's Price (cache hits cost nothing)
    transport: Any = field(default=None, repr=False)  # the backend's transport_stats, if it has them

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "transport"}
        out["cost_usd"] = round(self.cost_usd, 6)
        return {**out, **(self.transport.as_dict() if self.transport is not None else {})}


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (run seed, node id, attempt, ...)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


_JSON_BLOCK = re.compile(r"\{.*\}|\[.*\]", re.S)


@functools.lru_cache(maxsize=256)
def _validators(schema_json: bytes) -> tuple[jsonschema.protocols.Validator, Callable[[object], bool] | None]:
    """(jsonschema's validator, jsonschema-rs's `is_valid` or None) for one schema, built once.
    jsonschema.validate() re-checks the schema and builds a validator on every call (~10 ms), and even a
    built one takes ~70 us per answer; the compiled Rust one ~2 us. jsonschema stays the judge: an answer
    the fast one rejects (it is at most stricter, e.g. `$` before a trailing newline) is checked again by
    jsonschema, so the verdicts, and the records, are jsonschema's."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    try:
        fast = jsonschema_rs.validator_for(schema).is_valid
    except ValueError:  # a schema it cannot compile (its ValidationError is one): jsonschema alone
        fast = None
    return cls(schema), fast


def parse_json(text: str, schema: dict) -> object:
    """Parse and validate; tolerate prose or code fences around the JSON (unconstrained backends)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        m = _JSON_BLOCK.search(text)
        if not m:
            raise ValueError("no JSON object in response") from None
        data = json.loads(m.group(0))
    judge, fast = _validators(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    if fast is not None and fast(data):
        return data
    error = jsonschema.exceptions.best_match(judge.iter_errors(data))
    if error is not None:
        raise error
    return data


def _invalid_json(c: Completion) -> bool:
    return c.error is not None and c.error.startswith("invalid JSON")


def _unusable(c: Completion) -> bool:
    """An answer came back but cannot be used (a failed request is the backend's to retry)."""
    return _invalid_json(c) or (c.error is None and c.finish_reason == "length")


T = TypeVar("T")
ADMIT_PER_SLOT = 2  # requests admitted per backend slot: the next ones are ready when a slot frees
_ADMITTED = contextvars.ContextVar("treesynth_llm_admitted", default=False)


async def _holding(gate: AdmissionGate, call: Awaitable[T]) -> T:
    """Run `call` in a place of `gate` that is already held (`LLM.gather`), then give the place back."""
    _ADMITTED.set(True)  # this task's own context: its requests are not gated again
    try:
        return await call
    finally:
        gate.release()


class LLM:
    def __init__(self, backend: Backend, cache: RequestCache | None = None, json_retries: int = 2,
                 price: Price | None = None, budget: Budget | None = None):
        self.backend = backend
        self.cache = cache
        self.json_retries = json_retries
        self.price = price or Price()
        self.budget = budget
        self.answer_retries = int(getattr(backend, "answer_retries", 0))
        self.stats = LLMStats(transport=getattr(backend, "transport_stats", None))
        # A backend that serves `parallel` requests at once (HTTP slots) gets ADMIT_PER_SLOT x that many
        # admitted at a time (treesynth/llm/admission.py). Batching backends (in-process, Batch API) want
        # every request at once and declare no `parallel`.
        parallel = getattr(backend, "parallel", None)
        self._admit = ADMIT_PER_SLOT * int(parallel) if parallel else None
        self._gate: AdmissionGate | None = None

    @property
    def model(self) -> str:
        return self.backend.model

    @contextlib.asynccontextmanager
    async def admission(self) -> AsyncIterator[None]:
        """Hold one admission place (see __init__) for a piece of work that ends in requests, such as
        rendering a prompt and then asking for it: a fan-out of thousands waits here before doing any of
        that work. Requests made inside are not gated again. Work inside `admitted_first()` goes first."""
        if self._admit is None or _ADMITTED.get():
            yield
            return
        async with self._gate_of_loop():
            token = _ADMITTED.set(True)
            try:
                yield
            finally:
                _ADMITTED.reset(token)

    def _gate_of_loop(self) -> AdmissionGate:
        if self._gate is None or self._gate.loop is not asyncio.get_running_loop():  # one per event loop
            self._gate = AdmissionGate(self._admit or 1)
        return self._gate

    @property
    def admission_limit(self) -> int | None:
        """Requests admitted at a time (None: no gate, every request at once)."""
        return self._admit

    async def gather(self, calls: Iterable[Awaitable[T]]) -> list[T | BaseException]:
        """`asyncio.gather(*calls, return_exceptions=True)`, each call started once it holds an admission
        place. Up to the gate's limit of places are asked for ahead (so a release goes to this fan-out when
        it is `admitted_first`), but only calls holding one exist as tasks: a fan-out of thousands neither
        renders its requests in one event-loop turn nor keeps thousands of tasks waiting, each a dozen
        objects that every full garbage collection scans while the loop stands still."""
        if self._admit is None or _ADMITTED.get():
            return await asyncio.gather(*calls, return_exceptions=True)
        gate, todo = self._gate_of_loop(), list(calls)
        asked = deque(gate.reserve() for _ in range(min(len(todo), self._admit)))
        tasks: list[asyncio.Future] = []
        try:
            for call in todo:
                await asked[0]
                asked.popleft()
                tasks.append(asyncio.ensure_future(_holding(gate, call)))
                if len(tasks) + len(asked) < len(todo):
                    asked.append(gate.reserve())
        except BaseException:
            for waiter in asked:
                gate.give_up(waiter)
            for t in tasks:
                t.cancel()
            for call in todo[len(tasks):]:
                if inspect.iscoroutine(call):
                    call.close()  # never started: no "never awaited" warning
            raise
        return await asyncio.gather(*tasks, return_exceptions=True)

    async def complete(self, request: ChatRequest) -> Completion:
        if self._admit is None or _ADMITTED.get():
            return await self._complete(request)
        async with self._gate_of_loop():  # admission() without its generator: this runs per request
            return await self._complete(request)

    async def _complete(self, request: ChatRequest) -> Completion:
        self.stats.requests += 1
        attempts = 1 + (self.json_retries if request.json_schema else 0)
        c = Completion(text="", finish_reason="error", error="no attempt")
        for attempt in range(attempts):
            req = request
            if attempt > 0:
                self.stats.json_retries += 1
                req = replace(request, seed=derive_seed(request.seed, "retry", attempt))
            for again in range(1 + self.answer_retries):
                if again:
                    self.stats.answer_retries += 1
                c = await self._complete_once(req)
                if not _unusable(c):
                    break
            if not _invalid_json(c):
                break
        if c.error:
            self.stats.errors += 1
        return c

    async def _complete_once(self, req: ChatRequest) -> Completion:
        key = req.cache_key(self.backend.model) if self.cache is not None else ""  # hashing is not free
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            if self._parse(hit, req):
                return hit
        reserved = self.price.worst_case(req) if self.budget is not None else 0.0
        if self.budget is not None:
            self.budget.reserve(reserved)  # raises BudgetExceeded before anything is sent
        self.stats.calls += 1
        cost = 0.0
        try:
            c = await self.backend.complete(req)
            cost = self.price.answer_cost(req, c)
        except LLMError as e:
            return Completion(text="", finish_reason="error", error=str(e))
        finally:
            if self.budget is not None:
                self.budget.settle(reserved, cost)
        self.stats.prompt_tokens += c.prompt_tokens
        self.stats.completion_tokens += c.completion_tokens
        self.stats.cost_usd += cost
        if c.finish_reason == "length":
            self.stats.truncated += 1
        if c.error is None and req.json_schema is not None and not self._parse(c, req):
            self.stats.invalid_json += 1
            return c  # invalid JSON is never cached
        if self.cache is not None:
            self.cache.put(key, c)  # put() itself refuses errors and truncations
        return c

    @staticmethod
    def _parse(c: Completion, req: ChatRequest) -> bool:
        """Set c.data (schema requests); on failure set c.error and return False."""
        if req.json_schema is None:
            return True
        try:
            c.data = parse_json(c.text, req.json_schema)
            c.error = None
            return True
        except (ValueError, jsonschema.ValidationError) as e:
            c.error = f"invalid JSON: {str(e).splitlines()[0][:200]}"
            return False

    async def generate(self, requests: Sequence[ChatRequest], desc: str | None = None) -> list[Completion]:
        """Complete many requests concurrently (the backend bounds/batches); order is preserved."""
        bar = tqdm(total=len(requests), desc=desc, disable=desc is None, leave=False)

        async def one(r: ChatRequest) -> Completion:
            c = await self.complete(r)
            bar.update(1)
            return c

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            bar.close()

    async def aclose(self) -> None:
        if self.cache is not None:
            self.cache.flush()
        await self.backend.aclose()


def price_of(llm_cfg: Any) -> Price:
    """The model's price: `llm.price.input/output` when set, else the config's `llm.prices` table
    entry for the model (longest matching prefix, so dated snapshots match), else free (local models).
    In batch mode (`runtime.mode=batch`) with the Batch API's discount, `runtime.batch.discount`."""
    runtime = (llm_cfg.get("runtime") if hasattr(llm_cfg, "get") else None) or {}
    explicit = llm_cfg.get("price") or {}
    table = llm_cfg.get("prices") or {}
    model = str(llm_cfg.get("model", ""))
    known = max((name for name in table if model.startswith(str(name))), key=len, default=None)
    base = table[known] if known is not None else {}
    values = {}
    for side in ("input", "output"):
        value = explicit.get(side)
        value = base.get(side, 0.0) if value is None else value
        try:
            values[side] = float(value)
        except (TypeError, ValueError):
            raise TreesynthError(f"llm.price.{side} must be a number ($ per million tokens), got {value!r}") from None
        if values[side] < 0:
            raise TreesynthError(f"llm.price.{side} must be >= 0, got {values[side]}")
    discount = (runtime.get("batch") or {}).get("discount", 0.0) if runtime.get("mode") == "batch" else 0.0
    try:
        values["batch_discount"] = float(discount)
    except (TypeError, ValueError):
        raise TreesynthError(f"llm.runtime.batch.discount must be a fraction in [0, 1), got {discount!r}") from None
    if not 0 <= values["batch_discount"] < 1:
        raise TreesynthError(f"llm.runtime.batch.discount must be in [0, 1), got {discount}")
    return Price(**values)


def price_known(llm_cfg: Any) -> bool:
    """Whether the price is set or in the table (a local backend without either is free by definition)."""
    explicit = llm_cfg.get("price") or {}
    if explicit.get("input") is not None or explicit.get("output") is not None:
        return True
    model = str(llm_cfg.get("model", ""))
    return any(model.startswith(str(name)) for name in llm_cfg.get("prices") or {})
