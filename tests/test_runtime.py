"""The allocator settings apply on glibc Linux and are idempotent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.runtime import release_free_memory, tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tune_allocator_applies_once() -> None:
    assert tune_allocator() is True
    assert tune_allocator() is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_free_memory_goes_back() -> None:
    assert release_free_memory() is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_the_arena_limit_applies_and_threads_still_allocate() -> None:
    # In a child: the limit is process-wide and would outlive this test in the test process.
    code = (
        "import threading\n"
        "from engine.runtime import limit_arenas\n"
        "assert limit_arenas(2) is True\n"
        "def work():\n"
        "    for _ in range(200):\n"
        "        bytearray(1 << 16)\n"
        "threads = [threading.Thread(target=work) for _ in range(6)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
