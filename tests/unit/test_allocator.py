"""keep_freed_memory: a freed block stays in the process for reuse; off glibc it says it did nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
import textwrap

import pytest

from embedkit import allocator

# In a fresh process: allocate a 20 MiB tensor, free it, and print how many MiB of freed memory the heap holds
# (glibc's mallinfo2, 2.33 and later).
FREED_AFTER_ONE_BLOCK = textwrap.dedent(
    """
    import ctypes, sys, torch
    from embedkit.allocator import keep_freed_memory
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
        )]
    mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    mallinfo2.restype = MallInfo2
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()
    block = torch.empty(5 << 20)
    block.fill_(1.0)
    del block
    print(mallinfo2().fordblks >> 20)
    """
)


def _glibc_with_mallinfo2() -> bool:
    name = ctypes.util.find_library("c")
    return sys.platform.startswith("linux") and name is not None and hasattr(ctypes.CDLL(name), "mallinfo2")


def _freed_mib(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", FREED_AFTER_ONE_BLOCK, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33 or later")
def test_a_freed_block_stays_in_the_process_for_reuse() -> None:
    assert _freed_mib("default") < 20  # glibc unmapped the block: its next use faults every page in again
    assert _freed_mib("keep") >= 20


def test_nothing_is_set_off_linux_or_without_a_c_library(monkeypatch) -> None:
    monkeypatch.setattr(allocator, "_kept", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.keep_freed_memory() is False
