"""Heads saved beside a model: one format for every trained part that is not the inference path.

A sentence-transformers folder holds the encoder. What an objective trains beside it (SimCSE's MLP, a reward
head, DiffCSE's discriminator) goes into ``embedkit_heads/`` next to it, one head per name::

    embedkit_heads/<name>.safetensors     the head's tensors
    embedkit_heads/<name>.json            {"format": "embedkit-head/1", "head": <name>, ...its configuration}

``SentenceTransformer(path)`` never reads that folder, so a model with heads loads and embeds as one without.
Each file is written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from embedkit.errors import EmbedkitError
from embedkit.fsutil import atomic_write_bytes
from embedkit.types import JsonValue

HEADS_DIR = "embedkit_heads"
HEAD_FORMAT = "embedkit-head/1"


def head_files(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``(weights, config)`` paths of head ``name`` in the model folder ``folder``."""
    heads = Path(folder) / HEADS_DIR
    return heads / f"{name}.safetensors", heads / f"{name}.json"


def has_head(folder: str | os.PathLike[str], name: str) -> bool:
    """True when ``folder`` is a local model folder holding head ``name``."""
    weights, config = head_files(folder, name)
    return weights.is_file() and config.is_file()


def write_head(
    folder: str | os.PathLike[str], name: str, tensors: Mapping[str, Tensor], config: Mapping[str, JsonValue]
) -> Path:
    """Write head ``name`` (float32 CPU copies of ``tensors`` and its ``config``) into model folder ``folder``.

    Returns the weights file.
    """
    weights, config_file = head_files(folder, name)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.detach().float().contiguous().cpu() for key, tensor in tensors.items()}
    atomic_write_bytes(weights, safetensors_bytes(state))
    document = {"format": HEAD_FORMAT, "head": name, **config}
    atomic_write_bytes(config_file, (json.dumps(document, indent=2) + "\n").encode())
    return weights


def read_head(folder: str | os.PathLike[str], name: str) -> tuple[dict[str, Tensor], dict[str, JsonValue]]:
    """``(tensors, config)`` of head ``name`` in ``folder`` (the config without its format fields).

    Raises:
        EmbedkitError: the head is missing, or was written in another format.
    """
    weights, config_file = head_files(folder, name)
    if not has_head(folder, name):
        raise EmbedkitError(f"{folder} has no {name!r} head ({HEADS_DIR}/{weights.name} and {config_file.name})")
    document = json.loads(config_file.read_text())
    if document.get("format") != HEAD_FORMAT or document.get("head") != name:
        raise EmbedkitError(f"{config_file}: not an embedkit {name!r} head (format {document.get('format')!r})")
    config = {key: value for key, value in document.items() if key not in ("format", "head")}
    return load_file(str(weights)), config
