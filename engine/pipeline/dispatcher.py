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
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.multiprocessing as tmp

from engine.controls import Controls
from engine.pipeline.frame_ring import FrameRing
from engine.pipeline.schedule import Schedule
from engine.pipeline.worker import (
    JUMP_LIMIT,
    BuildDone,
    BuildTask,
    DropSession,
    FrameDone,
    RenderTask,
    SessionDropped,
    Stop,
    TaskFailed,
    WorkerReady,
    WorkerSettings,
    run_worker,
)
from engine.render.backends.stages import FP32, BackendChoice

Mode = Literal["live", "replay"]
WATCH_S = 0.2  # the dispatcher's longest sleep: worker deaths are seen within this
START_TIMEOUT_S = 120.0  # loading an avatar and warming a device
STOP_TIMEOUT_S = 5.0
RING_SLOTS = 8  # frames in flight or waiting to be read, per worker
READY_FRAMES_KEPT = 64  # a session that never reads keeps only its newest frames
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSettings:
    """avatar_path: the avatar file; schedule: which worker makes which frame; mode: live or replay;
    devices: one per worker (default: cuda:0.. when there are enough GPUs, else cpu for all);
    threads: torch threads per worker (default: the CPU cores split between the workers);
    in_flight: render tasks a worker may hold at once (1 in live mode keeps frames fresh);
    jitter_ms: random delay before every worker task, for ordering tests only;
    backend: how the workers run the generator and warp (engine.render.backends.select);
    jump_limit: controls this far from a warp's cache are generated instead (worker.JUMP_LIMIT;
    None: always warp, as the schedule says)."""

    avatar_path: Path
    schedule: Schedule
    mode: Mode = "live"
    devices: tuple[str, ...] | None = None
    threads: int | None = None
    in_flight: int | None = None
    jitter_ms: float = 0.0
    backend: BackendChoice = FP32
    jump_limit: float | None = JUMP_LIMIT

    def __post_init__(self) -> None:
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

    def tasks_in_flight(self) -> int:
        if self.in_flight is not None:
            return self.in_flight
        return 1 if self.mode == "live" else 2


@dataclass(frozen=True)
class Frame:
    """One output frame of a session.

    image (H, W, 3) uint8 RGB (a copy: the ring slot is free again); frame: the session's output
    index (increasing, with gaps where frames were lost); seq: the newest control it reflects;
    generated: a generator frame, else warped from a cache `distance` frames older; times are
    time.monotonic() seconds; stages_ms: the worker's stage timings.
    """

    session: int
    frame: int
    seq: int
    image: np.ndarray
    generated: bool
    distance: int
    worker: int
    submitted: float
    started: float
    finished: float
    cache_ready: float
    stages_ms: dict[str, float]

    @property
    def latency_ms(self) -> float:
        """Control submitted -> picture ready."""
        return (self.finished - self.submitted) * 1000.0


@dataclass
class _Control:
    seq: int
    controls: Controls
    submitted: float


@dataclass
class _Session:
    id: int
    epoch: int = 0
    base: int = 0  # output index where this epoch's schedule position 0 lies
    next_frame: int = 0  # the next output index to dispatch
    next_out: int = 0  # the next output index to hand out, in order
    pending: collections.deque[_Control] = field(default_factory=collections.deque)
    done: dict[int, Frame | None] = field(default_factory=dict)  # finished, waiting for order
    ready: collections.deque[Frame] = field(default_factory=collections.deque)
    errors: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=32))
    lost: int = 0
    dropped: int = 0  # live-mode controls replaced before they were rendered
    closed: bool = False
    on_frame: Callable[[Frame], None] | None = None  # called instead of queueing for get()
    plan: Schedule | None = None  # this epoch's schedule (fewer workers while one restarts)
    worker_map: tuple[int, ...] = ()  # the plan's worker i is worker_map[i]


@dataclass
class _Worker:
    index: int
    settings: WorkerSettings
    ring: FrameRing
    process: Any = None
    tasks: Any = None  # Connection: parent -> worker
    results: Any = None  # Connection: worker -> parent
    ready: bool = False
    in_flight: dict[tuple[int, int], int] = field(default_factory=dict)  # (session, frame) -> slot
    free_slots: list[int] = field(default_factory=list)
    restarts: int = 0
    sessions_held: int = 0  # sessions the worker keeps caches for, as it last reported
    device_mb: float = 0.0  # CUDA tensor memory it last reported (0 on the CPU)


class Pipeline:
    """Worker processes run by a schedule; see the module docstring."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.schedule = settings.schedule
        self._ctx = tmp.get_context("spawn")
        self._lock = threading.Condition()
        self._sessions: dict[int, _Session] = {}
        self._session_ids = itertools.count(1)
        self._turn = 0  # round-robin position over sessions
        self._workers: list[_Worker] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.restarts = 0
        self._resolution = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Pipeline:
        """Spawn the workers and wait until every one has loaded the avatar."""
        from engine.render.avatar import (
            Avatar,  # the parent reads the size once, then drops the model
        )

        if not self.settings.avatar_path.exists():
            raise FileNotFoundError(f"avatar file not found: {self.settings.avatar_path}")
        self._resolution = Avatar.load(self.settings.avatar_path).resolution
        devices = self.settings.worker_devices()
        threads = self.settings.worker_threads()
        try:
            for i, device in enumerate(devices):
                ring = FrameRing.create(RING_SLOTS, self._resolution, self._resolution)
                ws = WorkerSettings(
                    i,
                    self.settings.avatar_path,
                    device,
                    threads,
                    ring.spec,
                    self.settings.jitter_ms,
                    self.settings.backend,
                    self.settings.jump_limit,
                )
                self._workers.append(_Worker(i, ws, ring, free_slots=list(range(RING_SLOTS))))
            for w in self._workers:
                self._spawn(w)
            self._wait_ready(time.monotonic() + START_TIMEOUT_S)
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
        for w in self._workers:
            if w.process is not None and w.process.is_alive():
                self._send(w, Stop())
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in self._workers:
            if w.process is None:
                continue
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=STOP_TIMEOUT_S)
            self._close_pipes(w)
            w.process = None
        for w in self._workers:
            w.ring.close()
        self._workers = []

    def _spawn(self, w: _Worker) -> None:
        task_reader, task_writer = self._ctx.Pipe(duplex=False)
        result_reader, result_writer = self._ctx.Pipe(duplex=False)
        w.tasks, w.results, w.ready = task_writer, result_reader, False
        w.process = self._ctx.Process(
            target=run_worker,
            args=(w.settings, task_reader, result_writer),
            name=f"render-worker-{w.index}",
            daemon=True,
        )
        w.process.start()
        task_reader.close()  # the child holds its own copies
        result_writer.close()

    @staticmethod
    def _close_pipes(w: _Worker) -> None:
        for conn in (w.tasks, w.results):
            if conn is not None:
                conn.close()
        w.tasks = w.results = None

    @staticmethod
    def _send(w: _Worker, message: object) -> None:
        with contextlib.suppress(OSError):  # a dead worker's pipe: the watchdog restarts it
            w.tasks.send(message)

    def _wait_ready(self, deadline: float) -> None:
        while not all(w.ready for w in self._workers):
            for w in self._workers:
                if not w.process.is_alive():
                    raise RuntimeError(
                        f"render worker {w.index} exited with code {w.process.exitcode} while "
                        "starting (see its output above)"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"render workers not ready after {START_TIMEOUT_S:.0f} s")
            for msg in self._receive(WATCH_S):
                self._handle(msg)

    def _receive(self, timeout: float) -> list[Any]:
        """Every result waiting on any worker's pipe, after waiting up to `timeout` s for one (or
        for a worker to exit: its sentinel wakes the wait)."""
        conns = {w.results: w for w in self._workers if w.results is not None}
        sentinels = [w.process.sentinel for w in self._workers if w.process is not None]
        ready = multiprocessing.connection.wait([*conns, *sentinels], timeout=timeout)
        messages = []
        for ready_one in ready:
            conn = conns.get(ready_one)
            if conn is None:  # a sentinel
                continue
            try:
                while conn.results.poll():
                    messages.append(conn.results.recv())
            except (EOFError, OSError):  # the worker died; the watchdog handles it
                pass
        return messages

    # ------------------------------------------------------------------ the API

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def open_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    def worker_states(self) -> list[dict[str, Any]]:
        """Per worker: index, device, pid, alive, ready, frames in flight, restarts, and how many
        sessions it keeps caches for and its CUDA tensor memory (as it last reported)."""
        with self._lock:
            return [
                {
                    "index": w.index,
                    "device": w.settings.device,
                    "pid": w.process.pid if w.process is not None else None,
                    "alive": bool(w.process is not None and w.process.is_alive()),
                    "ready": w.ready,
                    "in_flight": len(w.in_flight),
                    "restarts": w.restarts,
                    "sessions_held": w.sessions_held,
                    "device_mb": round(w.device_mb, 2),
                }
                for w in self._workers
            ]

    def open_session(self) -> int:
        with self._lock:
            sid = next(self._session_ids)
            self._sessions[sid] = _Session(sid)
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
            for w in self._workers:
                if w.process is not None:
                    self._send(w, DropSession(session))
            self._lock.notify_all()

    def submit(self, session: int, seq: int, controls: Controls) -> None:
        """A new control state for `session` (replaces the unrendered one in live mode)."""
        with self._lock:
            s = self._session(session)
            if self.settings.mode == "live" and s.pending:
                s.pending.clear()
                s.dropped += 1
            s.pending.append(_Control(seq, controls, time.monotonic()))
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

    def _session(self, session: int) -> _Session:
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
            messages = self._receive(WATCH_S)
            with self._lock:
                for msg in messages:
                    self._handle(msg)
                self._dispatch()
                self._lock.notify_all()

    def _dispatch(self) -> None:
        """Hand out every frame that can start now, one per session per round."""
        sessions = list(self._sessions.values())
        progress = True
        while progress and sessions:
            progress = False
            for k in range(len(sessions)):
                s = sessions[(self._turn + k) % len(sessions)]
                if s.pending and self._try_start(s):
                    progress = True
            self._turn = (self._turn + 1) % len(sessions)

    def _try_start(self, s: _Session) -> bool:
        if s.plan is None:
            self._plan(s)
        assert s.plan is not None
        position = s.next_frame - s.base
        step = s.plan.step(position)
        build = s.plan.build(position)
        worker = self._workers[s.worker_map[step.worker]]
        builder = self._workers[s.worker_map[build.worker]] if build is not None else worker
        if not (worker.ready and builder.ready):
            return False
        # In flight per session, not per worker: a worker serving several sessions gets one task
        # of each, queued together, and warps them in one batched call (worker.render_batch).
        mine = sum(1 for sid, _ in worker.in_flight if sid == s.id)
        if mine >= self.settings.tasks_in_flight() or not worker.free_slots:
            return False
        control = s.pending.popleft()
        if build is not None:
            self._send(
                builder, BuildTask(s.id, s.epoch, build.cache, control.seq, control.controls)
            )
        slot = worker.free_slots.pop()
        worker.in_flight[(s.id, s.next_frame)] = slot
        self._send(
            worker,
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
            ),
        )
        s.next_frame += 1
        return True

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, WorkerReady):
            self._workers[msg.worker].ready = True
            for s in self._sessions.values():  # a restarted worker: back to the full schedule
                if s.plan is not None and s.plan != self.schedule:
                    self._new_epoch(s, lost=set())
        elif isinstance(msg, FrameDone):
            self._frame_done(msg)
        elif isinstance(msg, TaskFailed):
            self._task_failed(msg)
        elif isinstance(msg, BuildDone | SessionDropped):
            # Render tasks that follow a build in the worker's queue carry its time; only the
            # worker's session count is news here.
            w = self._workers[msg.worker]
            w.sessions_held, w.device_mb = msg.sessions_held, msg.device_mb

    def _frame_done(self, msg: FrameDone) -> None:
        w = self._workers[msg.worker]
        slot = w.in_flight.pop((msg.session, msg.frame), None)
        if slot is None:  # from a worker generation that has since been replaced
            return
        image = w.ring.slot(slot).copy()
        w.free_slots.append(slot)
        s = self._sessions.get(msg.session)
        if s is None or msg.frame < s.next_out or msg.frame in s.done:
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
        )
        s.done[msg.frame] = frame
        self._release(s)

    def _task_failed(self, msg: TaskFailed) -> None:
        s = self._sessions.get(msg.session)
        if msg.frame is not None:
            w = self._workers[msg.worker]
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
            if msg.frame >= s.next_out and msg.frame not in s.done:
                s.done[msg.frame] = None
                s.lost += 1
        elif current:  # a failed build: the frames planned on that cache cannot be made
            self._new_epoch(s, lost=set())
        self._release(s)

    def _release(self, s: _Session) -> None:
        """Move finished frames to the ready list in order, skipping lost ones."""
        while s.next_out in s.done:
            frame = s.done.pop(s.next_out)
            s.next_out += 1
            if frame is not None and s.on_frame is not None:
                s.on_frame(frame)
            elif frame is not None:
                s.ready.append(frame)
                while len(s.ready) > READY_FRAMES_KEPT:
                    s.ready.popleft()

    def _new_epoch(self, s: _Session, lost: set[int]) -> None:
        """Start the schedule again for `s` from its next frame, with new caches, on the workers
        that are up. `lost`: frames that will never come (they were on a dead worker); frames
        still in flight elsewhere finish and are kept."""
        s.epoch += 1
        for frame in lost:
            if frame >= s.next_out and frame not in s.done:
                s.done[frame] = None
                s.lost += 1
        s.base = s.next_frame
        self._plan(s)

    def _plan(self, s: _Session) -> None:
        """The schedule for the session's epoch: the configured one when every worker is up,
        else the same kind over the workers that are (a parallel schedule with one worker fewer
        keeps frames coming while the dead one restarts)."""
        up = tuple(w.index for w in self._workers if w.ready and w.process is not None)
        full = self.schedule
        if len(up) == full.workers or not up or full.name == "sequential":
            s.plan, s.worker_map = full, tuple(range(full.workers))
        else:
            s.plan, s.worker_map = Schedule(full.name, len(up), full.num_warps), up

    def _watch_workers(self) -> None:
        for w in self._workers:
            if w.process is None or w.process.is_alive():
                continue
            code = w.process.exitcode
            LOG.error("render worker %d died (exit code %s): restarting it", w.index, code)
            lost = list(w.in_flight)
            w.in_flight.clear()
            w.free_slots = list(range(RING_SLOTS))
            self._close_pipes(w)
            w.restarts += 1
            w.sessions_held, w.device_mb = 0, 0.0  # a new process holds nothing yet
            self.restarts += 1
            self._spawn(w)  # not ready until it reports WorkerReady (the avatar takes seconds)
            for s in self._sessions.values():
                s.errors.append(f"render worker {w.index} died (exit code {code}); recovering")
                # Its caches died with it: a new epoch on the workers still up.
                self._new_epoch(s, lost={frame for sid, frame in lost if sid == s.id})
                self._release(s)


def wait_for_exit(pids: list[int], timeout: float) -> bool:
    """True when none of `pids` is alive by `timeout` seconds from now (for shutdown checks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return True
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
