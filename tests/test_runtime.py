"""The allocator settings apply on glibc Linux and are idempotent."""

from __future__ import annotations

import sys

import pytest

from engine.runtime import release_free_memory, tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tune_allocator_applies_once() -> None:
    assert tune_allocator() is True
    assert tune_allocator() is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_free_memory_goes_back() -> None:
    assert release_free_memory() is True
