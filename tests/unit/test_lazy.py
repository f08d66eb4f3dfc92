"""Packages import their public names on first use: the CLI parses arguments and prints help without loading
torch, and every exported name still resolves to the object its module defines."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import embedkit

LAZY_PACKAGES = ["embedkit", "embedkit.encoders", "embedkit.index", "embedkit.mining"]

# What the command line must not load to parse its arguments: the model libraries and the heavy numeric ones.
HEAVY = ["torch", "sentence_transformers", "transformers", "faiss", "scipy", "pyarrow", "pandas", "sklearn"]

PARSE_ONLY = """
import json, sys
from embedkit.cli import build_parser, main

build_parser()
for argv in (["--help"], ["index", "--help"], ["index", "build", "--help"], ["eval", "retrieval", "--gain", "x"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)))
"""


def test_help_and_argument_errors_load_no_model_library() -> None:
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PARSE_ONLY}"], capture_output=True,
                          text=True, timeout=600, check=False, cwd=Path(embedkit.__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "usage: embedkit [-h] [-q | -v] COMMAND" in done.stdout
    assert "invalid choice: 'x'" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


BACKEND_LOOKUP = """
import json, sys
from embedkit.errors import UnknownNameError
from embedkit.index import BACKENDS, parse_spec

names = BACKENDS.names()
loaded = [name for name in ("torch", "faiss") if name in sys.modules]
spec = str(parse_spec("faiss:Flat"))
try:
    BACKENDS.get("annoy")
except UnknownNameError as error:
    message = str(error)
print(json.dumps([names, loaded, spec, [name for name in ("torch", "faiss") if name in sys.modules], message]))
"""


def test_a_backend_module_is_imported_on_the_first_lookup_of_its_name() -> None:
    done = subprocess.run([sys.executable, "-c", BACKEND_LOOKUP], capture_output=True, text=True, timeout=600,
                          check=False, cwd=Path(embedkit.__file__).parents[1])
    assert done.returncode == 0, done.stderr
    names, loaded_before, spec, loaded_after, message = json.loads(done.stdout)
    assert names == ["bm25", "faiss", "hybrid", "torch"] and loaded_before == []
    assert spec == "faiss:Flat" and loaded_after == ["faiss"]  # looking up faiss imports no torch
    assert message == "unknown index backend 'annoy'; valid names: bm25, faiss, hybrid, torch"


def _type_checked_names(package: str) -> dict[str, str]:
    """``name -> module`` of the ``from module import name`` lines under the package's ``if TYPE_CHECKING:``."""
    source = Path(importlib.import_module(package).__file__).read_text()
    names: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom) and statement.module, ast.unparse(statement)
                names.update({alias.name: statement.module for alias in statement.names})
    return names


def _eager_names(package: str) -> set[str]:
    """The names a package's ``__init__`` binds as it runs (imports, assignments, functions, classes)."""
    source = Path(importlib.import_module(package).__file__).read_text()
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_resolves(package) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    # and a type checker sees each of them, eagerly imported or under TYPE_CHECKING
    assert set(module.__all__) <= _eager_names(package) | set(_type_checked_names(package))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_type_checkers_see_what_python_resolves(package) -> None:
    module = importlib.import_module(package)
    for name, source in _type_checked_names(package).items():
        assert getattr(module, name) is getattr(importlib.import_module(source), name), f"{package}.{name}"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'embedkit' has no attribute 'Indx'"):
        embedkit.Indx  # noqa: B018
    from embedkit.index import exact  # submodules still import through the package

    assert exact.__name__ == "embedkit.index.exact"
