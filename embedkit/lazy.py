"""Packages whose public names are imported on first use (PEP 562), so that importing one costs nothing until a
name is used: ``import embedkit`` and ``embedkit --help`` load neither torch nor sentence-transformers.

A package lists its names twice: under ``if TYPE_CHECKING:`` as plain imports, which type checkers and IDEs
read, and in the table given to :func:`lazy_exports`, which Python reads (a test checks that the two agree)::

    if TYPE_CHECKING:
        from embedkit.index.index import Index
    __getattr__, __dir__ = lazy_exports(__name__, {"Index": "embedkit.index.index"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``, whose name ``n`` is ``exports[n]``'s ``n``.

    A name is imported from its module on first access and then kept in the package, so that later accesses
    are plain attribute lookups.
    """

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
