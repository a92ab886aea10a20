"""Who renders which frame, and how: the cache/warp schedules, as pure functions of the frame index.

A schedule maps output frame f to a `Step`: the worker that makes it, whether it is generated or
warped, from which cache (caches are numbered by the block that builds them) and how far that
cache's frame lies behind f. It also says which worker starts building which cache at f. Workers
own their caches: a frame is only ever warped by the worker that built its cache, after building it,
so no cache crosses a process and none is read while it is being built.

- `generator`: NUM_WARPS = 0, every frame is a generator frame (round robin over the workers).
- `sequential` (one worker): the generator renders frame f and leaves cache f; frames f + 1 ..
  f + NUM_WARPS are warped from it; then again. Blocks of NUM_WARPS + 1 frames.
- `parallel` (Yu et al. 2023, supplemental Algorithm 1; N workers): blocks of NUM_WARPS frames. At
  the first frame of block b, worker b mod N starts building cache b from that frame's controls; the
  frames of block b + N - 1 are warped from cache b by the same worker, which has had N - 1 blocks
  of time to build it while the others warped. So every output frame is a warp (latency: one warp),
  the caching role moves to the next worker every NUM_WARPS frames, and a cache serves NUM_WARPS
  frames at distances (N - 1) NUM_WARPS .. N NUM_WARPS - 1. The first N - 1 blocks have no finished
  cache yet: they are warped from cache 0, after it is built (the pipeline's warm-up). With N = 1 a
  block's first frame is its cache's own frame, output as generated.

Live mode on a parallel schedule of two or more workers (`Schedule.builds_by_need`) keeps the
round robin of builders and lets the state decide the rest (`live_build`, `live_step`). The paper's
schedule waits N - 1 blocks for a cache because on its GPUs a generator pass takes about that many
warps; here controls come at 30 Hz, a cache is often finished two frames after its own, and a
second session's passes share the same cores. So a live frame is warped from the newest finished
cache, wherever the schedule would have put it; a new cache starts when the newest is NUM_WARPS
frames old, or sooner when the controls have moved half the jump limit from it (a fast turn or an
opening mouth: `engine.pipeline.worker.JUMP_LIMIT`), one at a time per session, so a build that
cannot keep up is never queued behind another. Replay mode keeps the schedule as it is, so its
frames and figures do not depend on timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScheduleName = Literal["generator", "sequential", "parallel"]
# Live mode starts a cache early once the controls have moved this fraction of the jump limit from
# the newest one, so that it is finished before the warp would have to reach that far.
EARLY_BUILD = 0.5
SCHEDULES: tuple[str, ...] = ("generator", "sequential", "parallel")


@dataclass(frozen=True)
class Step:
    """How output frame `frame` is made.

    worker     index of the worker that renders it
    generated  True: a generator frame (its cache is `cache`); False: warped from `cache`
    cache      the cache (numbered by the block that built it) it is made from or makes
    distance   frames between the cache's frame and this one (0 for a generated frame)
    """

    frame: int
    worker: int
    generated: bool
    cache: int
    distance: int


@dataclass(frozen=True)
class Build:
    """At output frame `frame`, `worker` starts building cache `cache` from that frame's controls
    (before its part in rendering `frame`, if it has one)."""

    frame: int
    worker: int
    cache: int


@dataclass(frozen=True)
class Schedule:
    """A schedule by name, with its worker count and warps per cache (validated)."""

    name: ScheduleName
    workers: int = 1
    num_warps: int = 0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.name!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if not isinstance(self.num_warps, int) or self.num_warps < 0:
            raise ValueError(f"num_warps must be a non-negative integer, got {self.num_warps!r}")
        if self.name == "generator" and self.num_warps != 0:
            raise ValueError("the generator schedule renders every frame: num_warps must be 0")
        if self.name != "generator" and self.num_warps == 0:
            raise ValueError(f"the {self.name} schedule needs num_warps >= 1 (0 is 'generator')")
        if self.name == "sequential" and self.workers != 1:
            raise ValueError("the sequential schedule runs on one worker")

    @property
    def label(self) -> str:
        """A short name for tables: generator, sequential-W2, parallel-N2-W4."""
        if self.name == "generator":
            return "generator" if self.workers == 1 else f"generator-N{self.workers}"
        if self.name == "sequential":
            return f"sequential-W{self.num_warps}"
        return f"parallel-N{self.workers}-W{self.num_warps}"

    def step(self, frame: int) -> Step:
        """The step that makes output frame `frame` (>= 0)."""
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        if self.name == "generator":
            return Step(frame, frame % self.workers, True, frame, 0)
        if self.name == "sequential":
            block, offset = divmod(frame, self.num_warps + 1)
            return Step(frame, 0, offset == 0, block, offset)
        block = frame // self.num_warps
        cache = max(0, block - (self.workers - 1))  # the warm-up blocks use cache 0
        distance = frame - self.cache_frame(cache)
        # distance 0 only with one worker: the cache's own frame, output as generated.
        return Step(frame, self.builder(cache), distance == 0, cache, distance)

    @property
    def builds_by_need(self) -> bool:
        """Every frame is a warp once warmed up (parallel, two or more workers): in live mode such
        a schedule builds caches as the controls need them (`live_build`)."""
        return self.name == "parallel" and self.workers >= 2

    def live_step(self, frame: int, newest: int, newest_frame: int, worker: int) -> Step:
        """Live mode: `frame` warped from cache `newest` (the newest finished, or the first one
        while it builds), built from frame `newest_frame` by `worker`, which makes the frame; the
        first cache's own frame is output as generated."""
        distance = frame - newest_frame
        return Step(frame, worker, distance == 0, newest, distance)

    def live_build(
        self,
        frame: int,
        issued: int,
        built: int,
        built_frame: int,
        drift: float,
        limit: float | None,
        settled: bool = False,
    ) -> Build | None:
        """Live mode: the cache to start at `frame`, if any. `issued`: the newest cache started
        (-1: none yet); `built`: the newest finished, built from frame `built_frame`; `drift`:
        how far the controls have moved from it (`engine.controls.change`); `limit`: the jump
        limit (None: builds by age only). The next cache starts when none is building and the
        newest is NUM_WARPS frames old, `drift` is past half of `limit` or the controls have
        `settled` away from the newest cache's, on the next worker in turn (the dispatcher may
        give it to one with fewer builds under way)."""
        if issued < 0:
            return Build(frame, self.builder(0), 0)
        if issued > built:  # one at a time: the next waits until this one is done
            return None
        stale = frame - built_frame >= self.num_warps
        moved = limit is not None and drift > EARLY_BUILD * limit
        if not (stale or moved or settled):
            return None
        return Build(frame, self.builder(issued + 1), issued + 1)

    def build(self, frame: int) -> Build | None:
        """The cache whose building starts at output frame `frame`, if any."""
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        period = 1 if self.name == "generator" else self.num_warps + (self.name == "sequential")
        if frame % period:
            return None
        cache = frame // period
        return Build(frame, self.builder(cache), cache)

    def builder(self, cache: int) -> int:
        """The worker that builds cache `cache` (round robin: the caching role moves on)."""
        return cache % self.workers

    def cache_frame(self, cache: int) -> int:
        """The frame whose controls cache `cache` is built from."""
        if self.name == "generator":
            return cache
        if self.name == "sequential":
            return cache * (self.num_warps + 1)
        return cache * self.num_warps

    def distances(self) -> tuple[int, ...]:
        """The warp distances this schedule serves once warmed up (frames from cache to output),
        ascending; () for the generator schedule. Training and evaluation cover these."""
        if self.name == "generator":
            return ()
        period = self.num_warps + (self.name == "sequential")
        start = self.workers * period  # past the warm-up blocks
        seen = {self.step(f).distance for f in range(start, start + period * self.workers)}
        return tuple(sorted(seen - {0}))


DEFAULT_SCHEDULE = Schedule("parallel", 2, 4)  # the server's: two workers, four warps per cache
