"""One way to time a stage: median wall-clock milliseconds after a warm-up, synchronising CUDA."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fn: Callable[[int], Any], repeats: int, device: torch.device, warmup: int = 10
) -> float:
    """Call fn(i) `warmup` times, then time `repeats` calls; i counts calls from 0 throughout, so a
    caller can step through a trajectory."""
    for i in range(warmup):
        fn(i)
    sync(device)
    times = []
    for i in range(warmup, warmup + repeats):
        start = time.perf_counter()
        fn(i)
        sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 3)
