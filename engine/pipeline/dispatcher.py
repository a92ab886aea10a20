"""The render pipeline: a pool of worker processes run by a cache/warp schedule, behind a small
synchronous API (open a session, submit controls, get frames) that the server's asyncio bridge
wraps without blocking its loop.

    with Pipeline(PipelineSettings(avatar, Schedule("parallel", workers=2, num_warps=4))) as p:
        session = p.open_session()
        p.submit(session, seq=1, controls=c)
        frame = p.get(session, timeout=1.0)  # Frame: picture, seq, generated or warped, timings

One dispatcher thread in the parent does all the bookkeeping: it hands tasks to workers as the
schedule (`engine.pipeline.schedule`) says, reads their results, puts each session's frames back in order,
and watches the processes. Modes:
- live (the server): a session holds only its freshest control; a frame is made from it when the
  worker whose turn it is is free, so stale controls are dropped and no queue grows with time.
- replay (benchmarks, evaluation): every control becomes a frame, in order.
Sessions share the workers; each has its own caches and its own place in the schedule, and the
dispatcher serves them round robin so a busy session cannot starve another. A worker that dies is
noticed within `WATCH_S`, restarted, and the sessions start a new schedule epoch (their caches are
rebuilt); frames that were in flight on it are reported lost, not waited for.

This module is the API and the loop that ties the others together: the processes are kept in
`engine.pipeline.workers`, each session's order and epochs in `engine.pipeline.ordering`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.controls import Controls, change
from engine.pipeline.frames import Frame
from engine.pipeline.messages import (
    BuildDone,
    BuildTask,
    DropSession,
    FrameDone,
    RenderTask,
    SessionDropped,
    TaskFailed,
    WorkerReady,
)
from engine.pipeline.ordering import Control, SessionState
from engine.pipeline.schedule import Build, Step
from engine.pipeline.settings import PipelineSettings
from engine.pipeline.workers import STOP_TIMEOUT_S, WATCH_S, WorkerPool

__all__ = ["Frame", "Pipeline", "PipelineSettings"]  # the pipeline's API, importable from here

LOG = logging.getLogger(__name__)
# Live by need: controls this long unchanged are settled, and their frame is rendered again from
# a cache finished after it (SessionState.refresh). Three frames at 30 Hz: a page streaming its
# sliders or a camera never waits that long, so only a still picture is refreshed.
SETTLED_S = 0.1


class Pipeline:
    """Worker processes run by a schedule; see the module docstring."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.schedule = settings.schedule
        self._lock = threading.Condition()
        self._sessions: dict[int, SessionState] = {}
        self._session_ids = itertools.count(1)
        self._turn = 0  # round-robin position over sessions
        self._pool = WorkerPool(settings)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._resolution = 0
        # Sent controls -> drawn ones (the avatar's response and limits): two controls past a
        # limit make one picture, so how far a cache is from a frame is measured as drawn.
        self._drawn: Callable[[Controls], Controls] = _as_sent  # until start() reads the avatar

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Pipeline:
        """Spawn the workers and wait until every one has loaded the avatar."""
        from engine.render.avatar import (
            Avatar,  # the parent reads the size once, then drops the model
        )

        if not self.settings.avatar_path.exists():
            raise FileNotFoundError(f"avatar file not found: {self.settings.avatar_path}")
        avatar = Avatar.load(self.settings.avatar_path)
        self._resolution, self._drawn = avatar.resolution, avatar.drawing()
        del avatar
        try:
            self._pool.start(self._resolution, self._handle)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._dispatch_loop, name="pipeline", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (killing any that do not stop), free the shared memory. Idempotent."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._thread = None
        self._pool.close()

    # ------------------------------------------------------------------ the API

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def restarts(self) -> int:
        """Worker processes restarted after dying, over the pipeline's life."""
        return self._pool.restarts

    @property
    def open_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    @property
    def worker_pids(self) -> list[int]:
        return self._pool.pids()

    def worker_states(self) -> list[dict[str, Any]]:
        """Per worker: index, device, pid, alive, ready, frames in flight, restarts, and how many
        sessions it keeps caches for and its CUDA tensor memory (as it last reported)."""
        with self._lock:
            return self._pool.states()

    def open_session(self) -> int:
        with self._lock:
            sid = next(self._session_ids)
            self._sessions[sid] = SessionState(sid)
            return sid

    def subscribe(self, session: int, on_frame: Callable[[Frame], None]) -> None:
        """Have the session's frames, in order, passed to `on_frame` as they are released instead of
        waiting for `get`. It is called on the pipeline's thread with its lock held: it must only
        hand the frame over (e.g. `loop.call_soon_threadsafe`), never block or call back in."""
        with self._lock:
            self._session(session).on_frame = on_frame

    def close_session(self, session: int) -> None:
        """Forget a session; its caches are dropped on every worker, its frames discarded."""
        with self._lock:
            s = self._sessions.pop(session, None)
            if s is None:
                return
            s.closed = True
            for w in self._pool.workers:
                if w.process is not None:
                    w.send(DropSession(session))
            self._lock.notify_all()

    def submit(self, session: int, seq: int, controls: Controls) -> None:
        """A new control state for `session` (replaces the unrendered one in live mode)."""
        with self._lock:
            s = self._session(session)
            if self.settings.mode == "live" and s.pending:
                s.pending.clear()
                s.dropped += 1
            s.pending.append(Control(seq, controls, time.monotonic()))
            if self._thread is not None:
                self._dispatch()  # start it now if a worker is free: no wait for the thread

    def get(self, session: int, timeout: float | None = None) -> Frame | None:
        """The session's next frame in order, waiting up to `timeout` s (None: forever)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with self._lock:
            s = self._session(session)
            while not s.ready:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping or s.closed:
                    return None
                self._lock.wait(timeout=min(left, WATCH_S))
            return s.ready.popleft()

    def errors(self, session: int) -> list[str]:
        """Errors of this session's tasks since the last call (then forgotten)."""
        with self._lock:
            s = self._session(session)
            out = list(s.errors)
            s.errors.clear()
            return out

    def stats(self, session: int) -> dict[str, int]:
        with self._lock:
            s = self._session(session)
            return {"frames": s.next_out, "lost": s.lost, "dropped": s.dropped, "epoch": s.epoch}

    def idle(self, session: int) -> bool:
        """True when the session has nothing pending or in flight."""
        with self._lock:
            s = self._session(session)
            return not s.pending and s.next_frame == s.next_out and not s.done

    def _session(self, session: int) -> SessionState:
        s = self._sessions.get(session)
        if s is None:
            raise KeyError(f"no open session {session}")
        return s

    # ------------------------------------------------------------------ the dispatcher

    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                self._watch_workers()
                self._dispatch()
            messages = self._pool.receive(WATCH_S)
            with self._lock:
                for msg in messages:
                    self._handle(msg)
                self._dispatch()
                self._lock.notify_all()

    def _dispatch(self) -> None:
        """Hand out every frame that can start now, one per session per round."""
        sessions = list(self._sessions.values())
        if self.settings.mode == "live":
            now = time.monotonic()
            for s in sessions:
                if s.plan is not None and s.plan.builds_by_need:
                    s.refresh(now, SETTLED_S, self._drawn)
        progress = True
        while progress and sessions:
            progress = False
            for k in range(len(sessions)):
                s = sessions[(self._turn + k) % len(sessions)]
                if s.pending and self._try_start(s):
                    progress = True
            self._turn = (self._turn + 1) % len(sessions)

    def _try_start(self, s: SessionState) -> bool:
        if s.plan is None:
            s.replan(self.schedule, self._pool.up())
        assert s.plan is not None
        position = s.next_frame - s.base
        control = s.pending[0]
        if self.settings.mode == "live" and s.plan.builds_by_need:
            step, build = self._by_need(s, position, control.controls, control.settled)
        else:
            step, build = s.plan.step(position), s.plan.build(position)
        workers = self._pool.workers
        worker = workers[s.worker_map[step.worker]]
        builder = workers[s.worker_map[build.worker]] if build is not None else worker
        if not (worker.ready and builder.ready):
            return False
        # In flight per session, not per worker: a worker serving several sessions gets one task
        # of each, queued together, and warps them in one batched call (worker.render_batch).
        mine = sum(1 for sid, _ in worker.in_flight if sid == s.id)
        if mine >= self.settings.tasks_in_flight() or not worker.free_slots:
            return False
        s.pending.popleft()
        s.last, s.last_cache = control, step.cache
        if build is not None:
            builder.send(BuildTask(s.id, s.epoch, build.cache, control.seq, control.controls))
            builder.builds += 1
            s.start_cache(build.cache, position, control, build.worker)
        slot = worker.free_slots.pop()
        worker.in_flight[(s.id, s.next_frame)] = slot
        worker.send(
            RenderTask(
                session=s.id,
                epoch=s.epoch,
                frame=s.next_frame,
                cache=step.cache,
                generated=step.generated,
                distance=step.distance,
                seq=control.seq,
                controls=control.controls,
                slot=slot,
                submitted=control.submitted,
                cache_submitted=s.cache_times.get(step.cache, control.submitted),
            ),
        )
        s.next_frame += 1
        return True

    def _by_need(
        self, s: SessionState, position: int, controls: Controls, settled: bool = False
    ) -> tuple[Step, Build | None]:
        """Live mode on a schedule that always warps (`Schedule.live_build`): the frame warped
        from the newest finished cache, and the next cache started if the controls need it."""
        plan = s.plan
        assert plan is not None
        newest = max(s.built, 0)  # until the first cache is done, frames wait for it
        newest_frame, drift, holder = position, 0.0, plan.builder(newest)
        if newest in s.started:
            newest_frame, old, holder = s.started[newest]
            drift = change(self._drawn(old), self._drawn(controls))
        build = plan.live_build(
            position, s.issued, s.built, newest_frame, drift, self.settings.jump_limit, settled
        )
        if build is not None:
            # The worker with the fewest builds under way (the turn's on a tie): sessions whose
            # turns meet on one worker would otherwise queue there while the other's thread idles.
            turn = build.worker
            load = [self._pool.workers[s.worker_map[i]].builds for i in range(plan.workers)]
            least = min(range(plan.workers), key=lambda i: (load[i], i != turn))
            build = dataclasses.replace(build, worker=least)
            if build.cache == newest:  # the first cache: this frame is its own
                newest_frame, holder = position, least
        return plan.live_step(position, newest, newest_frame, holder), build

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, WorkerReady):
            self._pool.workers[msg.worker].ready = True
            for s in self._sessions.values():  # a restarted worker: back to the full schedule
                if s.plan is not None and s.plan != self.schedule:
                    s.new_epoch(set(), self.schedule, self._pool.up())
        elif isinstance(msg, FrameDone):
            self._frame_done(msg)
        elif isinstance(msg, TaskFailed):
            self._task_failed(msg)
        elif isinstance(msg, BuildDone | SessionDropped):
            # Render tasks that follow a build in the worker's queue carry its time; what is news
            # here is the worker's session count and, in live mode, a cache frames may warp from.
            w = self._pool.workers[msg.worker]
            w.sessions_held, w.device_mb = msg.sessions_held, msg.device_mb
            if isinstance(msg, BuildDone):
                w.builds = max(0, w.builds - 1)
                built = self._sessions.get(msg.session)
                if built is not None and msg.epoch == built.epoch:
                    built.cache_built(msg.cache)

    def _frame_done(self, msg: FrameDone) -> None:
        w = self._pool.workers[msg.worker]
        slot = w.in_flight.pop((msg.session, msg.frame), None)
        if slot is None:  # from a worker generation that has since been replaced
            return
        image = w.ring.slot(slot).copy()
        w.free_slots.append(slot)
        s = self._sessions.get(msg.session)
        if s is None or not s.awaits(msg.frame):
            return  # a closed session, or a frame already written off
        frame = Frame(
            session=msg.session,
            frame=msg.frame,
            seq=msg.seq,
            image=image,
            generated=msg.generated,
            distance=msg.distance,
            worker=msg.worker,
            submitted=msg.submitted,
            started=msg.started,
            finished=msg.finished,
            cache_ready=msg.cache_ready,
            stages_ms=msg.stages_ms,
            drift=msg.drift,
            cache_submitted=msg.cache_submitted,
        )
        s.done[msg.frame] = frame
        s.release()

    def _task_failed(self, msg: TaskFailed) -> None:
        s = self._sessions.get(msg.session)
        w = self._pool.workers[msg.worker]
        if msg.frame is None:  # a build's failure is its answer
            w.builds = max(0, w.builds - 1)
        else:
            slot = w.in_flight.pop((msg.session, msg.frame), None)
            if slot is not None:
                w.free_slots.append(slot)
        if s is None:
            return
        current = msg.epoch == s.epoch
        if current:  # an older epoch's failures follow from what ended it: not news
            s.errors.append(msg.message)
            LOG.warning("session %d: %s", s.id, msg.message)
        if msg.frame is not None:
            s.write_off(msg.frame)
        elif current:  # a failed build: the frames planned on that cache cannot be made
            s.new_epoch(set(), self.schedule, self._pool.up())
        s.release()

    def _watch_workers(self) -> None:
        for w in self._pool.workers:
            if not w.exited():
                continue
            code = w.process.exitcode
            LOG.error("render worker %d died (exit code %s): restarting it", w.index, code)
            lost = self._pool.restart(w)
            for s in self._sessions.values():
                s.errors.append(f"render worker {w.index} died (exit code {code}); recovering")
                # Its caches died with it: a new epoch on the workers still up.
                s.new_epoch(
                    {frame for sid, frame in lost if sid == s.id}, self.schedule, self._pool.up()
                )
                s.release()


def _as_sent(controls: Controls) -> Controls:
    return controls
