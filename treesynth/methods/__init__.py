"""Method registry: `cfg.method.name` -> class, imported lazily (treesynth/registry.py).
Adding a method = one file in this folder + one line here + conf/method/<name>.yaml."""

from __future__ import annotations

from treesynth.methods.base import Method, MethodEnv, PromptRecord
from treesynth.registry import Registry

METHODS = Registry("method", "method=...", {
    "treesynth": "treesynth.methods.treesynth:TreeSynth",
    "temperature": "treesynth.methods.temperature:Temperature",
    "evol_instruct": "treesynth.methods.evol_instruct:EvolInstruct",
    "persona_hub": "treesynth.methods.persona_hub:PersonaHub",
    "human": "treesynth.methods.human:Human",
    "treesynth_balance": "treesynth.methods.balance:TreeSynthBalance",
})


def method_class(name: str) -> type[Method]:
    return METHODS.load(name)


__all__ = ["METHODS", "Method", "MethodEnv", "PromptRecord", "method_class"]
