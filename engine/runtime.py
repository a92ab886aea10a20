"""Process-wide settings that make the engine fast on a CPU, applied once per process.

glibc's malloc serves every allocation above its mmap threshold (128 KiB at first) with a fresh
mmap and gives freed heap back to the OS eagerly. The rasteriser allocates a few buffers of
0.1-10 MB per frame, so each frame page-faults its memory in anew: measured on this 2-core CPU,
mesh -> UV map at 256^2 took 4.0-4.2 ms with the defaults and 2.3-2.4 ms with the settings below
(512^2: 11.7-12.6 -> 5.5 ms). Keeping freed memory in the heap costs nothing in a process that
renders frames of one size over and over: its peak is its steady state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit: buffers below it reuse heap
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024  # keep up to this much freed memory for the next frame

_applied: bool | None = None


def _glibc(name: str, argtypes: tuple[Any, ...]) -> Any | None:
    """glibc's function `name` with its argument types, or None where there is none (not Linux,
    musl and others: those keep their allocator's defaults)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    return function


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc's malloc_trim, every arena); True if done.
    For a process going idle (a worker whose last session closed, the server after a session):
    what a finished session freed stops counting as resident memory. A few ms."""
    malloc_trim = _glibc("malloc_trim", (ctypes.c_size_t,))
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


def tune_allocator() -> bool:
    """Apply the malloc settings (glibc on Linux only); True if they are in force. Idempotent."""
    global _applied  # one process-wide fact, like the allocator it describes
    if _applied is not None:
        return _applied
    mallopt = _glibc("mallopt", (ctypes.c_int, ctypes.c_int))
    _applied = (
        mallopt is not None
        and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    )
    return _applied


def limit_arenas(arenas: int | None = None) -> bool:
    """At most `arenas` malloc arenas (default: one per core, at least 2; glibc's default is 8 per
    core); True if in force. For the server process, before its threads start: each thread that
    mallocs (the encoder threads of the loop's executor grow to 6 under churn) otherwise gets an
    arena of its own, fragmented by what it keeps. 100 connect/disconnect cycles (bench.churn) grew
    the server by 39 and 51 MB with the default (server and workers +4.0% and +5.2%: past the 5%
    target), by 20 and 24 MB with 2 arenas (+2.1%, +2.4%)."""
    mallopt = _glibc("mallopt", (ctypes.c_int, ctypes.c_int))
    count = arenas if arenas is not None else max(2, os.cpu_count() or 2)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, count))
