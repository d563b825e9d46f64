"""Progress of an evaluation in items (treesynth/progress.py: a bar on a terminal, else a log line every
`progress.every_s` seconds).

lm-eval hands all requests of one type (generate_until, loglikelihood, loglikelihood_rolling) to the model
in one call and loops over them inside it, so the count is taken where the model reports each result: its
cache hook (`add_partial`, which lm-eval's hf and vllm models call once per finished request; we run no
lm-eval cache, so the hook is free). One item is one benchmark document; a call's requests are turned into
items at its own ratio (a multiple-choice document is several loglikelihood requests), and the count is
made exact when the call returns. The model's own tqdm is turned off while ours runs: one progress view.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from treesynth.progress import Progress

log = logging.getLogger("treesynth")

REQUEST_TYPES = ("generate_until", "loglikelihood", "loglikelihood_rolling")


def load_lm(name: str, model_args: dict[str, Any], batch_size: Any) -> Any:
    """The lm-eval model `simple_evaluate(model=name, model_args=...)` would build, built here so that
    its requests can be counted while it runs."""
    import lm_eval.api.registry

    return lm_eval.api.registry.get_model(name).create_from_arg_obj(
        model_args, {"batch_size": batch_size, "max_batch_size": None, "device": None})


def _counting_hook(on_result: Callable[[], None]) -> Any:
    from lm_eval.api.model import CacheHook

    class CountingHook(CacheHook):
        def __init__(self) -> None:
            super().__init__(None)

        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            on_result()

    return CountingHook()


class _ItemCounter:
    """Wraps one request-type method of the model: adds the call's items to the total, converts the
    hook's finished requests into items while the call runs, and sets the exact count when it returns."""

    def __init__(self, progress: Progress, calls: list[int]) -> None:
        self.progress, self.calls = progress, calls
        self.base = 0  # items finished before the running call
        self.items = 0  # items of the running call
        self.requests = 0  # requests of the running call
        self.finished = 0  # requests of the running call the model has reported

    def result(self) -> None:
        self.finished += 1
        if self.requests:
            self.progress.set(self.base + min(self.items, self.finished * self.items // self.requests))

    def wrap(self, method: Callable[..., list]) -> Callable[..., list]:
        quiet = "disable_tqdm" in inspect.signature(method).parameters

        def call(requests: list, *args: Any, **kwargs: Any) -> list:
            self.calls.append(len(requests))
            self.base, self.finished, self.requests = self.progress.done, 0, len(requests)
            self.items = len({(r.task_name, r.doc_id) for r in requests})
            self.progress.set(self.base, (self.progress.total or 0) + self.items)
            if quiet:
                kwargs.setdefault("disable_tqdm", True)
            try:
                return method(requests, *args, **kwargs)
            finally:
                self.requests = 0
                self.progress.set(self.base + self.items)

        return call


@contextmanager
def counted_model(model: Any, model_args: dict[str, Any] | None, batch_size: Any,
                  name: str) -> Iterator[tuple[Any, Progress | None]]:
    """(the lm-eval model, its Progress) while lm-eval runs it: `model` is an lm-eval model name (built
    here from `model_args`) or an LM object. The Progress counts items (its totals go to eval.json); it
    is None on the ranks other than 0 of a multi-process evaluation, which show nothing."""
    lm = load_lm(model, model_args or {}, batch_size) if isinstance(model, str) else model
    if getattr(lm, "rank", 0):
        yield lm, None
        return
    calls: list[int] = []  # requests of each request-type call so far (none yet: lm-eval is building them)
    progress = Progress(name, None, "items",
                        extra=lambda: {"requests": sum(calls)} if calls else {"lm-eval": "building requests"})
    counter = _ItemCounter(progress, calls)
    own = dict(vars(lm))  # instance attributes the patches shadow, put back afterwards
    patched = [t for t in REQUEST_TYPES if callable(getattr(lm, t, None))]
    for t in patched:
        setattr(lm, t, counter.wrap(getattr(lm, t)))
    hook = getattr(lm, "cache_hook", None)
    lm.cache_hook = _counting_hook(counter.result)
    try:
        yield lm, progress
    finally:
        for t in patched:
            if t in own:
                setattr(lm, t, own[t])
            else:
                delattr(lm, t)
        lm.cache_hook = hook
        progress.close()
        log.info("%s", progress.line())
