"""Run-time precision choice."""

from __future__ import annotations

import pytest
import torch

from embedkit.errors import ConfigError
from embedkit.precision import cpu_has_fast_bf16, resolve_precision


def test_cpu_flags_decide_bf16() -> None:
    assert cpu_has_fast_bf16("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_fast_bf16("flags : fpu amx_bf16\n")
    assert not cpu_has_fast_bf16("flags : fpu sse avx2 avx512f\n")
    assert not cpu_has_fast_bf16("")


def test_forced_precisions() -> None:
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)


def test_bad_precisions() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("half", "cpu")
