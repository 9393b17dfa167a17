"""glibc's malloc told to keep the memory XLA:CPU frees, so a step does not page-fault its buffers in again.

XLA:CPU allocates an execution's temporaries as one buffer (1.35 GB for a ViT-Ti/16 training step at batch 32) and
frees it when the execution ends. glibc serves an allocation that large with a fresh `mmap` and returns it with
`munmap`, so every step page-faulted its whole temporary buffer in again: 330,000 minor faults and ~0.35 s of a
1.8 s step (BENCHMARKS.md, experiment 27). Served from malloc's heap instead, which is never handed back, the next
step reuses the same pages and faults none.

The price is resident memory: XLA allocates a step's buffer before the previous step's is freed, and the host may
dispatch steps ahead, so the heap keeps one buffer per step in flight plus one. `keep_freed_memory` therefore
switches only where those copies fit in half of the memory available, and only on the CPU backend (elsewhere the
buffers live on the accelerator). Two calls, because glibc fixes part of its choice early:
- `share_main_arena()` before JAX starts its threads (`vit_jax.entry.start_process`, the benchmark's worker): a
  thread that first allocates otherwise gets an arena of its own, and those arenas `mmap` any allocation that does
  not fit them whatever malloc is told later;
- `keep_freed_memory(temp_bytes, copies)` once the step is compiled and its temporary size known (the train loop,
  the benchmark).
`VIT_JAX_KEEP_HOST_MEMORY=0` leaves malloc as it is; off glibc (macOS, musl) both do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path

SWITCH = "VIT_JAX_KEEP_HOST_MEMORY"  # "0": glibc's defaults

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1  # -1 (as size_t: the largest): never return the heap's top to the kernel
M_MMAP_MAX = -4  # 0: never serve an allocation with its own mmap
M_ARENA_MAX = -8  # 1: every thread allocates from the main arena
DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's own


@functools.cache
def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if os.environ.get(SWITCH, "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def share_main_arena() -> bool:
    """Every thread started from now on allocates from malloc's main arena (the one `keep_freed_memory` can keep
    large allocations in). True where applied."""
    mallopt = _mallopt()
    return mallopt is not None and mallopt(M_ARENA_MAX, 1) == 1


def available_bytes() -> int | None:
    """The kernel's estimate of memory available without swapping (`MemAvailable`), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def keeps(temp_bytes: int, copies: int, available: int | None) -> bool:
    """Whether `copies` resident temporary buffers of `temp_bytes` fit in half of `available`."""
    return available is not None and temp_bytes * copies <= available // 2


_kept = [False]  # whether this process's malloc keeps freed memory now


def keep_freed_memory(temp_bytes: int, copies: int, backend: str) -> bool:
    """Large allocations from malloc's heap, never returned, where `keeps(...)` on the CPU backend (see the module
    docstring); `copies`: the temporary buffers that can be allocated at once (steps in flight + 1). A later call
    whose buffers do not fit (a sweep's larger model) restores glibc's defaults and returns the heap's free pages.
    True where in force."""
    mallopt = _mallopt()
    if mallopt is None or backend != "cpu":
        return False
    if keeps(temp_bytes, copies, available_bytes()):
        _kept[0] = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    elif _kept[0]:
        mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        ctypes.CDLL(None).malloc_trim(0)
        _kept[0] = False
    return _kept[0]
