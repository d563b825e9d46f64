import pytest

from treesynth.errors import TreesynthError
from treesynth.registry import Registry


def test_registry_loads_lazily_and_names_the_choices():
    reg = Registry("widget", "widget=...", {"json": "json:dumps", "path": "os.path:join"})
    assert sorted(reg) == ["json", "path"] and "json" in reg and len(reg) == 2
    import json
    import os.path

    assert reg.load("json") is json.dumps and reg.load("path") is os.path.join
    with pytest.raises(TreesynthError, match=r"^unknown widget 'nope'; choose from json, path \(widget=\.\.\.\)$"):
        reg.load("nope")


def test_registry_rejects_a_malformed_reference():
    with pytest.raises(ValueError, match="module:attribute"):
        Registry("widget", "widget=...", {"bad": "json.dumps"})
