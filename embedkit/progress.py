"""Progress bars: the one place that decides whether a bar shows, and what it is called.

Every bar embedkit draws comes from :func:`progress_bar`, labelled with the work it counts (``encode``,
``train``, ``mining``, ...) and with the stages it runs in (:func:`stage`): the encoding inside a dev evaluation
during training shows as ``dev sts: encode``. :func:`set_progress` turns every bar off (``embedkit --quiet``).

Bars of other libraries that tell a user nothing are hidden: sentence-transformers' ``Batches`` (embedkit draws
its own, labelled) and, around embedkit's own model loads and saves, transformers' ``Loading weights`` and
``Writing model shards`` (:func:`quiet_library_bars`, which leaves transformers' settings as it found them).

In a Jupyter kernel without ipywidgets, the first import of ``tqdm.auto`` warns "IProgress not found" and falls
back to the plain text bar; this module makes that first import itself with the warning silenced, so that the
plain bar comes quietly (and with ipywidgets installed, the notebook widget).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

TqdmHook = Callable[[Callable[..., object], tuple[object, ...], dict[str, object]], object]
"""A transformers tqdm hook: ``hook(factory, args, kwargs)`` makes the bar transformers asked for."""

SHOW_FROM = 2048
"""With ``show=None``, a bar shows for this many texts (or pairs, queries, ...) and more."""

_shown = True
_stages: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("embedkit_progress_stages", default=())
# quiet_library_bars blocks open in any thread, and the transformers tqdm hook found before the first of them
_quiet = threading.Lock()
_quiet_blocks = 0
_hook_before: TqdmHook | None = None


def set_progress(shown: bool) -> bool:
    """Show (the default) or hide every progress bar embedkit draws; returns the setting it replaces."""
    global _shown
    previous, _shown = _shown, shown
    return previous


def shows(total: int, show: bool | None = None) -> bool:
    """Whether a bar over ``total`` items shows: never while bars are off (:func:`set_progress`), else as
    ``show`` says, and for :data:`SHOW_FROM` items or more when it is ``None``."""
    return _shown and (total >= SHOW_FROM if show is None else show)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Bars drawn inside the block carry ``name`` in their label; stages nest (``dev``, then ``sts``)."""
    token = _stages.set((*_stages.get(), name))
    try:
        yield
    finally:
        _stages.reset(token)


def label(name: str) -> str:
    """``name`` after the stages it runs in: ``"encode"`` inside ``dev`` and ``sts`` is ``"dev sts: encode"``."""
    stages = _stages.get()
    return f"{' '.join(stages)}: {name}" if stages else name


def progress_bar(name: str, total: int, *, unit: str = "text", show: bool | None = None, initial: int = 0) -> tqdm:
    """A tqdm bar labelled :func:`label` ``(name)`` over ``total`` units, starting at ``initial``; disabled
    unless :func:`shows` says otherwise."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=label(name), unit=unit, disable=not shows(total, show))


def _no_bar(factory: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    """A transformers tqdm hook that makes every bar it is asked for a disabled one."""
    return factory(*args, **{**kwargs, "disable": True})


@contextlib.contextmanager
def quiet_library_bars() -> Iterator[None]:
    """Hide transformers' own bars (``Loading weights``, ``Writing model shards``) inside the block, and put
    back whatever tqdm hook was set before. Download bars of the hub are left alone: they say something.

    The hook is global, so blocks that overlap in several threads share one: it is set when the first block
    opens and put back when the last one closes.
    """
    global _quiet_blocks, _hook_before
    from transformers.utils import logging as transformers_logging

    set_hook = getattr(transformers_logging, "set_tqdm_hook", None)
    if set_hook is None:  # transformers 4 has no per-weight bars to hide
        yield
        return
    with _quiet:
        if _quiet_blocks == 0:
            _hook_before = set_hook(_no_bar)
        _quiet_blocks += 1
    try:
        yield
    finally:
        with _quiet:
            _quiet_blocks -= 1
            if _quiet_blocks == 0:
                set_hook(_hook_before)


def _import_tqdm_auto_quietly() -> None:
    """Import ``tqdm.auto`` with its notebook warnings silenced (see the module's docstring)."""
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        import tqdm.auto  # noqa: F401


if "ipykernel.zmqshell" in sys.modules:  # a Jupyter kernel, where tqdm.auto chooses between widget and text
    _import_tqdm_auto_quietly()
