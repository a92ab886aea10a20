"""Pipeline modes timed end to end with real worker processes: `bench.engine --pipeline` runs this.

For each mode (schedule, workers, NUM_WARPS) two runs over the same control trajectory:
- throughput (`fps`): replay mode, every control rendered in order, the queue kept full, as the
  paper measured frames per second; `frames` of them after `WARMUP_FRAMES`.
- latency (`latency_ms_p50`, `latency_ms_p95`): live mode with controls arriving at `PACE_HZ` (a
  camera's or a browser's rate), control submitted -> picture ready in shared memory, over the
  same number of frames; `live_fps` is the rate frames came out at; `live_warped_share`,
  `live_warp_distance_mean`, `live_warp_age_ms_mean` / `_p95` (how long before a warped frame's
  control its cache's came) and `live_beyond_jump_limit` (the share of frames whose controls lay
  past the jump limit from their cache's) say what those frames were.
On a CPU machine the cores are split between the workers (torch threads per process).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.controls import Controls
from engine.pipeline.dispatcher import Frame, Pipeline, PipelineSettings
from engine.pipeline.schedule import Schedule
from engine.pipeline.worker import JUMP_LIMIT
from engine.render.backends.select import choose

WARMUP_FRAMES = 30
PACE_HZ = 30.0
GET_TIMEOUT_S = 60.0
MODES: tuple[Schedule, ...] = (
    Schedule("generator"),
    Schedule("sequential", 1, 1),
    Schedule("sequential", 1, 2),
    Schedule("sequential", 1, 4),
    Schedule("parallel", 2, 1),
    Schedule("parallel", 2, 2),
    Schedule("parallel", 2, 4),
)


def _throughput(p: Pipeline, controls: list[Controls], frames: int) -> tuple[float, list[Frame]]:
    """Replay every control; fps over the frames after the warm-up."""
    session = p.open_session()
    total = WARMUP_FRAMES + frames
    for i in range(total):
        p.submit(session, i, controls[i % len(controls)])
    out = []
    for _ in range(total):
        frame = p.get(session, timeout=GET_TIMEOUT_S)
        if frame is None:
            raise RuntimeError(f"pipeline stalled: {p.stats(session)} {p.errors(session)}")
        out.append(frame)
    p.close_session(session)
    timed = out[WARMUP_FRAMES:]
    span = timed[-1].finished - out[WARMUP_FRAMES - 1].finished
    return len(timed) / span, timed


def _paced(p: Pipeline, controls: list[Controls], frames: int) -> tuple[list[Frame], float]:
    """Live mode, controls at PACE_HZ; the frames after the warm-up and their output rate."""
    session = p.open_session()
    period = 1.0 / PACE_HZ
    out: list[Frame] = []
    start = time.monotonic()
    i = 0
    while len(out) < WARMUP_FRAMES + frames:
        due = start + i * period
        now = time.monotonic()
        if now >= due:
            p.submit(session, i, controls[i % len(controls)])
            i += 1
            continue
        frame = p.get(session, timeout=due - now)
        if frame is not None:
            out.append(frame)
        if now - start > GET_TIMEOUT_S + (WARMUP_FRAMES + frames) * period * 4:
            raise RuntimeError(f"pipeline stalled: {p.stats(session)} {p.errors(session)}")
    p.close_session(session)
    timed = out[WARMUP_FRAMES:]
    rate = (len(timed) - 1) / (timed[-1].finished - timed[0].finished)
    return timed, rate


def measure_mode(
    avatar: Path,
    schedule: Schedule,
    controls: list[Controls],
    frames: int,
    precision: str = "fp32",
    runtime: str = "torch",
) -> dict[str, Any]:
    """One mode, its workers running the backend chosen for their thread count and schedule."""
    settings = PipelineSettings(avatar, schedule, mode="replay")
    device = settings.worker_devices()[0]
    selection = choose(
        avatar, precision, runtime, device, settings.worker_threads(), None, schedule.num_warps
    )
    settings = replace(settings, backend=selection.choice)
    with Pipeline(settings) as p:
        fps, replayed = _throughput(p, controls, frames)
    with Pipeline(replace(settings, mode="live")) as p:
        live, live_fps = _paced(p, controls, frames)
    latency = [f.latency_ms for f in live]
    warped = [f for f in replayed if not f.generated]
    live_warped = [f for f in live if not f.generated]
    return {
        "name": schedule.label,
        "workers": schedule.workers,
        "num_warps": schedule.num_warps,
        "fps": round(fps, 2),
        "latency_ms_p50": round(statistics.median(latency), 2),
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 2),
        "frames": len(replayed),
        "live_fps": round(live_fps, 2),
        "pace_hz": PACE_HZ,
        "threads_per_worker": settings.worker_threads(),
        "warped_share": round(len(warped) / len(replayed), 3),
        "warp_distance_mean": round(statistics.mean(f.distance for f in warped), 2)
        if warped
        else 0,
        "backend": selection.choice.label,
        # Live, a parallel schedule builds by need (engine.pipeline.schedule): what it served.
        "live_warped_share": round(len(live_warped) / len(live), 3),
        "live_warp_distance_mean": round(statistics.mean(f.distance for f in live_warped), 2)
        if live_warped
        else 0,
        "live_beyond_jump_limit": round(sum(f.drift > JUMP_LIMIT for f in live) / len(live), 3),
        **warp_ages(live_warped, "live_warp_age_ms"),
    }


def warp_ages(warped: list[Frame], key: str) -> dict[str, float | None]:
    """`key`_mean and `key`_p95: how far back in time the warped frames' caches lay
    (Frame.age_ms)."""
    ages = [f.age_ms for f in warped]
    return {
        f"{key}_mean": round(statistics.mean(ages), 1) if ages else None,
        f"{key}_p95": round(float(np.percentile(ages, 95)), 1) if ages else None,
    }


def measure(
    avatar: Path,
    controls: list[Controls],
    frames: int,
    precision: str = "fp32",
    runtime: str = "torch",
) -> list[dict[str, Any]]:
    return [
        measure_mode(avatar, schedule, controls, frames, precision, runtime) for schedule in MODES
    ]


def table(modes: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | workers | NUM_WARPS | backend | fps (replay) | latency p50 / p95 ms (live, 30 Hz) | live fps |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['name']} | {m['workers']} | {m['num_warps']} | {m.get('backend', '-')} | "
        f"{m['fps']:.1f} | {m['latency_ms_p50']:.1f} / {m['latency_ms_p95']:.1f} | "
        f"{m['live_fps']:.1f} |"
        for m in modes
    ]
    return "\n".join(lines)
