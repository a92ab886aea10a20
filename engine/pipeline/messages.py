"""The records that pass between the parent and a render worker process (`engine.pipeline.worker`):
tasks down its queue, results back. Small and picklable; pictures never travel in them (they go
through the worker's `FrameRing` slot that a task names)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.controls import Controls


@dataclass(frozen=True)
class BuildTask:
    """Run the generator on `controls` and keep the cache as (session, epoch, cache)."""

    session: int
    epoch: int
    cache: int
    seq: int
    controls: Controls


@dataclass(frozen=True)
class RenderTask:
    """Make output frame `frame` of a session into ring slot `slot`: the picture of the build of
    `cache` when `generated`, else a warp from that cache to `controls`."""

    session: int
    epoch: int
    frame: int
    cache: int
    generated: bool
    distance: int
    seq: int
    controls: Controls
    slot: int
    submitted: float  # time.monotonic() when the control arrived (one clock for all processes)
    cache_submitted: float = 0.0  # when the control `cache` was started from arrived


@dataclass(frozen=True)
class DropSession:
    session: int


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class WorkerReady:
    worker: int
    pid: int


@dataclass(frozen=True)
class FrameDone:
    """A picture is in `slot`. Times are time.monotonic() seconds; stages_ms per stage."""

    worker: int
    session: int
    epoch: int
    frame: int
    cache: int
    generated: bool
    distance: int
    seq: int
    slot: int
    submitted: float
    started: float
    finished: float
    cache_ready: float  # when the cache this frame came from finished building
    stages_ms: dict[str, float]
    # A warp's largest change of one control-vector entry from its cache's (as the jump rule
    # measures it, against the cache as it is now: re-anchored or not); 0 for a generated frame.
    drift: float = 0.0
    cache_submitted: float = 0.0  # the task's


@dataclass(frozen=True)
class BuildDone:
    """sessions_held: how many sessions the worker keeps caches for after this build;
    device_mb: tensor memory allocated on its CUDA device (0 on the CPU)."""

    worker: int
    session: int
    epoch: int
    cache: int
    finished: float
    generator_ms: float
    sessions_held: int
    device_mb: float


@dataclass(frozen=True)
class SessionDropped:
    """The worker forgot `session`'s caches; it now holds caches for `sessions_held` sessions and
    `device_mb` of CUDA tensors (what a leak check reads: zero sessions, and the model's memory only,
    once every session has closed)."""

    worker: int
    session: int
    sessions_held: int
    device_mb: float


@dataclass(frozen=True)
class TaskFailed:
    """A task raised; `frame` is None for a failed build."""

    worker: int
    session: int
    epoch: int
    frame: int | None
    cache: int
    message: str
