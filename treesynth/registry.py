"""Name -> lazily imported object, the one registry shape of the project (stages, LLM backends, methods,
training modes, benchmark kinds): entries are "module:attribute" strings, so listing the choices or
rejecting an unknown name imports nothing, and an entry's module loads only when it is used."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from treesynth.errors import TreesynthError


class Registry(Mapping[str, str]):
    """`what` names the kind in errors ("method"), `override` the config key that picks it ("method=...").
    A mapping of name -> reference, so `name in registry` and `sorted(registry)` work as on a dict."""

    def __init__(self, what: str, override: str, entries: Mapping[str, str]) -> None:
        for name, ref in entries.items():
            if ref.count(":") != 1:
                raise ValueError(f"{what} {name!r}: reference {ref!r} is not 'module:attribute'")
        self.what, self.override, self._entries = what, override, dict(entries)

    def __getitem__(self, name: str) -> str:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: Any) -> str:
        """`name` itself when registered, else the one-line error every registry gives."""
        if name not in self._entries:
            raise TreesynthError(f"unknown {self.what} {name!r}; choose from {', '.join(sorted(self._entries))} "
                                 f"({self.override})")
        return name

    def load(self, name: Any) -> Any:
        """The object registered under `name`, importing its module now."""
        module, attribute = self._entries[self.check(name)].split(":")
        return getattr(importlib.import_module(module), attribute)
