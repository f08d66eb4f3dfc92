"""The folder layout is the architecture: no module imports a layer above its own, and there is no cycle.

Every ``import`` and ``from ... import`` in the package counts, also those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency. Run alone with ``pytest tests/unit/test_layers.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "embedkit"

# Low to high (DESIGN.md). Units of one rank must not import each other: losses and index are independent, and
# so are mining and eval.
RANKS: dict[str, int] = {
    **dict.fromkeys(
        (
            "types", "errors", "registry", "fsutil", "precision", "distributed", "version", "hub", "lazy", "progress",
            "allocator",
        ),
        0,
    ),
    "data": 1,
    "encoders": 2,
    "losses": 3,
    "index": 3,
    "mining": 4,
    "eval": 4,
    "training": 5,
    "cli": 6,
    # The package root and the 0.1 re-export of the preference names sit on top of everything.
    "__init__": 7,
    "__main__": 7,
    "preference": 7,
}
GROUND = 0


def _unit(module: str) -> str:
    """``embedkit.losses.infonce`` -> ``losses``; ``embedkit`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """The ``embedkit`` modules that module ``name``, read from ``path``, imports (``from embedkit import x``
    names ``embedkit.x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "embedkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] == "embedkit":
                # ``from a import b`` imports module ``a.b`` when there is one, else a name of ``a``
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _known(target: str, modules: set[str]) -> str:
    """The module that ``target`` (a module, or a name inside one) belongs to."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def import_graph() -> dict[str, set[str]]:
    """``module -> the embedkit modules it imports`` for every module of the package."""
    raw = {_module_name(path): _imports(path, _module_name(path)) for path in sorted(PACKAGE.rglob("*.py"))}
    modules = set(raw)
    return {module: {_known(t, modules) for t in imported} - {module} for module, imported in raw.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in graph.items():
        unit = _unit(module)
        for target in sorted(imported):
            other = _unit(target)
            if other == unit or other == "__init__" and unit == "__init__":
                continue
            if other not in RANKS:
                problems.append(f"{module} imports {target}, which is in no layer")
            elif RANKS[other] > RANKS[unit] or (RANKS[other] == RANKS[unit] and RANKS[unit] != GROUND):
                problems.append(f"{module} (layer {unit}) imports {target} (layer {other})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles between modules (each reported once, from its smallest module name)."""
    found: list[list[str]] = []

    def visit(start: str, node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target == start:
                found.append([*path, start])
            elif target in graph and target > start and target not in path:
                visit(start, target, [*path, target])

    for module in sorted(graph):
        visit(module, module, [module])
    return found


def test_every_module_belongs_to_a_layer():
    assert {_unit(module) for module in import_graph()} <= set(RANKS)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle_between_modules():
    # Package __init__ files re-export their own modules, which is not a cycle between modules.
    graph = {
        module: {t for t in imported if not (module.startswith(t + ".") or t.startswith(module + "."))}
        for module, imported in import_graph().items()
    }
    assert cycles(graph) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from embedkit.training.fit import fit\n", "embedkit.training.fit.fit (layer training)"),
        ("def f():\n    from embedkit.cli import main\n", "embedkit.cli.main (layer cli)"),
        ("from embedkit.index import Index\n", "embedkit.index.Index (layer index)"),
    ],
)
def test_the_check_catches_an_upward_or_sideways_import(tmp_path, source, expected):
    module = tmp_path / "embedkit" / "losses" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    graph = {"embedkit.losses.x": _imports(module, "embedkit.losses.x")}
    assert upward_imports(graph) == [f"embedkit.losses.x (layer losses) imports {expected}"]


def test_the_check_catches_a_cycle():
    graph = {"embedkit.a": {"embedkit.b"}, "embedkit.b": {"embedkit.c"}, "embedkit.c": {"embedkit.a"}}
    assert cycles(graph) == [["embedkit.a", "embedkit.b", "embedkit.c", "embedkit.a"]]
