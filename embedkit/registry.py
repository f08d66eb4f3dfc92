"""Registries: one plain ``name -> entry`` dict per sub-package, with errors that list the valid names."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from embedkit.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of entries (factories, evaluators, ...) looked up by name."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}
        self._modules: dict[str, str] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register_module(self, name: str, module: str) -> None:
        """Declare that importing ``module`` registers ``name``; the first lookup of ``name`` imports it, so that
        using one entry does not import what every other needs (torch for one index backend, faiss for another)."""
        self._modules[name] = module

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._modules:
            importlib.import_module(self._modules[name])
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.what, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._modules})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
