"""Name -> lazily imported object, the one registry shape of the project (stages, LLM backends, methods,
training modes, benchmark kinds): entries are "module:attribute" strings, so listing the choices or
rejecting an unknown name imports nothing, and an entry's module loads only when it is used. A registry
made with `references=True` also takes a "module:attribute" name itself: your own class, without
editing ours (the test double `llm=scripted` is chosen that way, so the product never names it)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from treesynth.errors import TreesynthError


class Registry(Mapping[str, str]):
    """`what` names the kind in errors ("method"), `override` the config key that picks it ("method=...").
    A mapping of name -> reference, so `name in registry` and `sorted(registry)` work as on a dict."""

    def __init__(self, what: str, override: str, entries: Mapping[str, str], references: bool = False) -> None:
        for name, ref in entries.items():
            if not _is_reference(ref):
                raise ValueError(f"{what} {name!r}: reference {ref!r} is not 'module:attribute'")
        self.what, self.override, self._entries, self.references = what, override, dict(entries), references

    def __getitem__(self, name: str) -> str:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: Any) -> str:
        """`name` itself when registered, else the one-line error every registry gives."""
        if name not in self._entries and not (self.references and _is_reference(name)):
            extra = " or a 'module:attribute' reference" if self.references else ""
            raise TreesynthError(f"unknown {self.what} {name!r}; choose from {', '.join(sorted(self._entries))}"
                                 f"{extra} ({self.override})")
        return name

    def load(self, name: Any) -> Any:
        """The object registered under `name` (or named by it, a reference), importing its module now."""
        module, attribute = self._entries.get(self.check(name), name).split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as e:
            if name in self._entries:
                raise  # our own entry: a broken install, the traceback is the useful part
            raise TreesynthError(f"{self.what} {name!r} cannot be loaded: {e} ({self.override})") from None


def _is_reference(ref: Any) -> bool:
    return isinstance(ref, str) and ref.count(":") == 1 and all(ref.split(":"))
