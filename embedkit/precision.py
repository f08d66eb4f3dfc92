"""Run-time choice of numeric precision: bfloat16 autocast where the hardware has bf16 units, else float32.

Precision is always the user's choice in the end (``"fp32"``, ``"bf16"`` or ``"fp16"`` force one); ``"auto"``
only picks bf16 where it is known to be both fast and as accurate as fp32 for these models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from embedkit.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the CLI reads PRECISIONS without loading torch
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where that file does not exist)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has native bf16 dot products (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    return bool(cpu_flags(cpuinfo) & _CPU_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``: ``torch.float32`` means no autocast."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("fp16 autocast needs a CUDA device; use bf16 or fp32 on the CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32


@contextlib.contextmanager
def autocast(dtype: torch.dtype, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on ``device``, or nothing for float32."""
    import torch

    device = torch.device(device)
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


class PrecisionMixin:
    """``device`` and ``compute_dtype()`` for an encoder that runs a torch ``model`` in ``precision``.

    Shared by every encoder class, so that where a model runs and in which dtype is decided in one place.
    """

    model: torch.nn.Module
    precision: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def compute_dtype(self) -> torch.dtype:
        """The autocast dtype of :attr:`precision` on :attr:`device` (``torch.float32``: no autocast)."""
        return resolve_precision(self.precision, self.device)
