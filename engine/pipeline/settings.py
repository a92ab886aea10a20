"""What a pipeline is asked to be, checked when it is made: a bad setting fails in the caller, at
once, rather than later inside a worker process. Kept apart from the dispatcher so configuration
(the server's, the benchmarks') can hold and pass settings without the machinery that runs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from engine.pipeline.schedule import Schedule
from engine.pipeline.worker import JUMP_LIMIT
from engine.render.backends.stages import FP32, BackendChoice

Mode = Literal["live", "replay"]
JUMPS = ("rebuild", "generate")  # live by need: what a frame past the jump limit gets
RING_SLOTS = 8  # frames in flight or waiting to be read, per worker


@dataclass(frozen=True)
class PipelineSettings:
    """avatar_path: the avatar file; schedule: which worker makes which frame; mode: live or replay;
    devices: one per worker (default: cuda:0.. when there are enough GPUs, else cpu for all);
    threads: torch threads per worker (default: the CPU cores split between the workers);
    in_flight: render tasks a worker may hold at once (1 in live mode keeps frames fresh);
    jitter_ms: random delay before every worker task, for ordering tests only;
    backend: how the workers run the generator and warp (engine.render.backends.select);
    jump_limit: controls this far from a warp's cache are generated instead (worker.JUMP_LIMIT;
    None: always warp, as the schedule says);
    jumps: live by need (`builds_by_need`), a frame past the jump limit is still warped while a
    cache starts early ("rebuild": the frame rate holds) or is generated ("generate": the picture
    is the one asked for, and the frames behind it wait)."""

    avatar_path: Path
    schedule: Schedule
    mode: Mode = "live"
    devices: tuple[str, ...] | None = None
    threads: int | None = None
    in_flight: int | None = None
    jitter_ms: float = 0.0
    backend: BackendChoice = FP32
    jump_limit: float | None = JUMP_LIMIT
    jumps: str = "rebuild"

    def __post_init__(self) -> None:
        if self.jumps not in JUMPS:
            raise ValueError(f"jumps must be one of {JUMPS}, got {self.jumps!r}")
        if self.mode not in ("live", "replay"):
            raise ValueError(f"mode must be 'live' or 'replay', got {self.mode!r}")
        if self.devices is not None and len(self.devices) != self.schedule.workers:
            raise ValueError(
                f"{len(self.devices)} devices for {self.schedule.workers} workers: give one each"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads}")
        if self.in_flight is not None and not 1 <= self.in_flight < RING_SLOTS:
            raise ValueError(f"in_flight must be within 1..{RING_SLOTS - 1}, got {self.in_flight}")

    def worker_devices(self) -> tuple[str, ...]:
        if self.devices is not None:
            return self.devices
        n = self.schedule.workers
        if torch.cuda.is_available() and torch.cuda.device_count() >= n:
            return tuple(f"cuda:{i}" for i in range(n))
        return ("cpu",) * n

    def worker_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.schedule.workers)

    @property
    def worker_jump_limit(self) -> float | None:
        """The limit past which a worker generates a frame instead of warping it: off live by
        need unless `jumps` asks for generating (the dispatcher then starts caches early)."""
        if self.builds_by_need and self.jumps == "rebuild":
            return None
        return self.jump_limit

    @property
    def builds_by_need(self) -> bool:
        """Live mode on a schedule that always warps: caches are built as the controls need
        them and every frame warps from the newest (`Schedule.live_build`); the jump limit then
        starts caches early instead of turning warps into generator frames."""
        return self.mode == "live" and self.schedule.builds_by_need

    def tasks_in_flight(self) -> int:
        if self.in_flight is not None:
            return self.in_flight
        return 1 if self.mode == "live" else 2
