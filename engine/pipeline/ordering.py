"""Each session's frames in order, whatever order the workers finish them in.

Workers run a session's frames side by side, so they finish out of order, and some never finish
(a failed task, a worker that died). A session's record keeps the finished ones until every
earlier one has come or been written off, then releases them in order; a lost frame leaves a gap
in the output indices rather than holding the frames after it back. When the caches a session's
schedule relies on are gone, it starts a new epoch: the schedule again from its next frame, on the
workers that are up, with results of the old epoch still taken if they come.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.controls import Controls
from engine.pipeline.frames import Frame
from engine.pipeline.schedule import Schedule

READY_FRAMES_KEPT = 64  # a session that never reads keeps only its newest frames
CACHE_TIMES_KEPT = 16  # caches back whose start times are kept (a schedule warps from few)


@dataclass
class Control:
    seq: int
    controls: Controls
    submitted: float
    # Queued again because the controls settled away from every cache: a cache is to be
    # built from them (Schedule.live_build's `settled`).
    settled: bool = False


@dataclass
class SessionState:
    id: int
    epoch: int = 0
    base: int = 0  # output index where this epoch's schedule position 0 lies
    next_frame: int = 0  # the next output index to dispatch
    next_out: int = 0  # the next output index to hand out, in order
    pending: collections.deque[Control] = field(default_factory=collections.deque)
    done: dict[int, Frame | None] = field(default_factory=dict)  # finished, waiting for order
    ready: collections.deque[Frame] = field(default_factory=collections.deque)
    errors: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=32))
    lost: int = 0
    dropped: int = 0  # live-mode controls replaced before they were rendered
    closed: bool = False
    on_frame: Callable[[Frame], None] | None = None  # called instead of queueing for get()
    plan: Schedule | None = None  # this epoch's schedule (fewer workers while one restarts)
    worker_map: tuple[int, ...] = ()  # the plan's worker i is worker_map[i]
    # Live mode by need (Schedule.live_build): the newest cache of this epoch started and the
    # newest known finished, and for each recent one the schedule position and controls it was
    # started from and the plan's worker that builds it.
    issued: int = -1
    built: int = -1
    started: dict[int, tuple[int, Controls, int]] = field(default_factory=dict)
    # When the control each recent cache of this epoch was started from arrived (every
    # schedule): how old a warped frame's cache is, in time (Frame.age_ms).
    cache_times: dict[int, float] = field(default_factory=dict)
    # The newest control dispatched and the cache its frame warps from: when a newer cache
    # finishes and no control is pending, that control is rendered again from it (a page sends
    # controls only when they change, so otherwise the picture would stay a warp from the cache
    # before the change: a jaw opened from a closed one, until the next slider move).
    last: Control | None = None
    last_cache: int = -1

    def awaits(self, frame: int) -> bool:
        """True while `frame` is neither handed out nor finished: news of it still counts."""
        return frame >= self.next_out and frame not in self.done

    def write_off(self, frame: int) -> None:
        """`frame` will never come: count it lost, so the frames after it need not wait."""
        if self.awaits(frame):
            self.done[frame] = None
            self.lost += 1

    def release(self) -> None:
        """Move finished frames to the ready list in order, skipping lost ones."""
        while self.next_out in self.done:
            frame = self.done.pop(self.next_out)
            self.next_out += 1
            if frame is not None and self.on_frame is not None:
                self.on_frame(frame)
            elif frame is not None:
                self.ready.append(frame)
                while len(self.ready) > READY_FRAMES_KEPT:
                    self.ready.popleft()

    def start_cache(self, cache: int, position: int, control: Control, worker: int) -> None:
        """Cache `cache` of this epoch is being built by the plan's worker `worker`, from schedule
        position `position` and `control`."""
        self.issued = max(self.issued, cache)
        self.started[cache] = (position, control.controls, worker)
        self.cache_times[cache] = control.submitted
        for old in [c for c in self.cache_times if c < cache - CACHE_TIMES_KEPT]:
            del self.cache_times[old]

    def cache_built(self, cache: int) -> None:
        """Cache `cache` of this epoch is finished; older ones are no longer warped from."""
        self.built = max(self.built, cache)
        for old in [c for c in self.started if c < self.built]:
            del self.started[old]

    def refresh(
        self, now: float, settled_s: float, drawn: Callable[[Controls], Controls] | None = None
    ) -> bool:
        """Live by need: where the newest control dispatched came at least `settled_s` before
        `now` (time.monotonic()) and nothing is pending, queue that control again when its frame
        warps from an older cache than the newest finished (the picture catches up with the
        cache made for it), or, marked `settled`, when no cache was made from exactly these
        controls and none is building (one is then built from them: a still picture ends as the
        generator's own, not a warp from a cache near it; `drawn`: sent controls -> the drawn
        ones, so that a control past the avatar's limits does not rebuild the picture it has).
        True when one was queued."""
        if self.last is None or self.pending or now - self.last.submitted < settled_s:
            return False  # controls still arriving: the next one renders from the new cache
        if self.last_cache < self.built:
            self.pending.append(Control(self.last.seq, self.last.controls, time.monotonic()))
            return True
        newest = self.started.get(self.built)
        if (
            self.issued > self.built
            or newest is None
            or _alike(newest[1], self.last.controls, drawn)
        ):
            return False
        self.pending.append(
            Control(self.last.seq, self.last.controls, time.monotonic(), settled=True)
        )
        return True

    def new_epoch(self, lost: set[int], full: Schedule, up: tuple[int, ...]) -> None:
        """Start the schedule again from the next frame, with new caches, on the workers `up`.
        `lost`: frames that will never come (they were on a dead worker); frames still in flight
        elsewhere finish and are kept."""
        self.epoch += 1
        self.issued, self.built = -1, -1
        self.started.clear()
        self.cache_times.clear()
        self.last_cache = -1
        for frame in lost:
            self.write_off(frame)
        self.base = self.next_frame
        self.replan(full, up)

    def replan(self, full: Schedule, up: tuple[int, ...]) -> None:
        """The schedule for this epoch: `full` when every worker is up, else the same kind over
        the workers `up` (a parallel schedule with one worker fewer keeps frames coming while the
        dead one restarts)."""
        if len(up) == full.workers or not up or full.name == "sequential":
            self.plan, self.worker_map = full, tuple(range(full.workers))
        else:
            self.plan, self.worker_map = Schedule(full.name, len(up), full.num_warps), up


def _alike(a: Controls, b: Controls, drawn: Callable[[Controls], Controls] | None) -> bool:
    """Whether `a` and `b` make the same picture (equal as sent, or as `drawn`)."""
    return a == b or (drawn is not None and drawn(a) == drawn(b))
