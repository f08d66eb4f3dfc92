"""The identity of a model's weights: what an index records of the model that built it, and what names the
cached export of a model for another inference backend."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

if TYPE_CHECKING:  # imported where used: `embedkit index info` reads an index without loading torch
    from torch import nn

_FINGERPRINTS: WeakKeyDictionary[nn.Module, tuple[tuple[tuple[str, int, int], ...], str]] = WeakKeyDictionary()


def model_fingerprint(model: nn.Module) -> str:
    """``"sha256:<hex>"`` over the names, dtypes, shapes and bytes of ``model``'s state dict.

    Cached per model; the cache key holds each tensor's storage address and version counter, which every
    in-place update (an optimizer step) bumps, so a model trained after fingerprinting gets a new fingerprint.
    """
    import torch

    state = model.state_dict()
    key = tuple((name, tensor.data_ptr(), tensor._version) for name, tensor in state.items())
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    fingerprint = f"sha256:{digest.hexdigest()}"
    _FINGERPRINTS[model] = (key, fingerprint)
    return fingerprint
