"""Exceptions raised by embedkit.

Every error a user can cause derives from :class:`EmbedkitError`; the command line prints such an error
as one line and exits non-zero, without a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable


class EmbedkitError(Exception):
    """Base class of every user-facing error."""


class DataError(EmbedkitError, ValueError):
    """Bad input data. ``str(error)`` starts with ``file:line:`` when the location is known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = message
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}" if path is not None else message)


class ConfigError(EmbedkitError, ValueError):
    """An invalid option, recipe or combination of settings."""


class UnknownNameError(EmbedkitError, KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __init__(self, what: str, name: str, valid: Iterable[str]) -> None:
        self.name = name
        self.valid = sorted(valid)
        super().__init__(f"unknown {what} {name!r}; valid names: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class MissingDependencyError(ConfigError, ImportError):
    """An optional dependency is not installed. The message names the extra that installs it; it is also an
    ``ImportError``, so code that guards an optional import with ``except ImportError`` still catches it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the {package} package: pip install 'embedkit[{extra}]'")


def require(module: str, extra: str, purpose: str) -> None:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``: a one-line error where an
    optional dependency is missing, before any work starts.

    Example:
        >>> require("mteb", "eval", "embedkit eval mteb")
    """
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(module, extra, purpose) from error
