"""The backend registry and the test doubles' place: `llm.backend` names resolve through one Registry
with one error line; the scripted backend and the stub servers live in treesynth/testing/, which no
product module imports, and `python run.py --help` labels `llm=scripted` a test double."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import REPO

from treesynth.errors import TreesynthError
from treesynth.llm import BACKENDS, build_backend
from treesynth.testing.scripted import ScriptedBackend

SCRIPTED = "treesynth.testing.scripted:ScriptedBackend"  # what conf/llm/scripted.yaml names


def test_backend_names_resolve_through_the_registry():
    assert sorted(BACKENDS) == ["embedded", "openai", "vllm"]  # the product does not name the test double
    assert isinstance(build_backend({"backend": SCRIPTED, "model": "s"}), ScriptedBackend)
    with pytest.raises(TreesynthError, match=r"^unknown llm backend 'gpt'; choose from embedded, openai, vllm or a "
                                             r"'module:attribute' reference \(llm=\.\.\. or llm\.backend=\.\.\.\)$"):
        build_backend({"backend": "gpt", "model": "m"})
    with pytest.raises(TreesynthError, match=r"^llm backend 'treesynth.testing:Nope' cannot be loaded: .*Nope"):
        build_backend({"backend": "treesynth.testing:Nope", "model": "m"})


def test_no_product_module_imports_the_test_doubles():
    importers = []
    for root in ("treesynth", "training", "evaluation"):
        for path in (REPO / root).rglob("*.py"):
            if path.is_relative_to(REPO / "treesynth" / "testing"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "treesynth.testing" or n.startswith("treesynth.testing.") for n in names):
                    importers.append(str(path.relative_to(REPO)))
    assert importers == []


def test_help_labels_scripted_a_test_double():
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=True).stdout
    groups = next(line for line in out.splitlines() if line.startswith("llm: "))
    assert "scripted" in groups  # still composable, for tests and benches
    assert "llm=scripted is a test double, for the test suite" in out
