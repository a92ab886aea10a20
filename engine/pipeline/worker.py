"""One render worker process: one avatar copy on one device, caches per session, pictures out
through shared memory.

The parent (`engine.pipeline.workers` starts it, `engine.pipeline.dispatcher` gives it work) sends
small task records on a queue; the worker answers each with a small result record (both in
`engine.pipeline.messages`). Pictures go into the worker's `FrameRing` slot named by the task. A
worker only ever warps from caches it built itself, after building them (tasks run in the order
sent); a render that names a cache the worker does not hold fails loudly instead of using another.
The worker exits on `Stop`, and by itself when its parent is gone (no orphan keeps a device busy).

A one-thread worker on the CPU builds its caches on a thread of its own at a lower priority
(`BUILD_NICE`): a generator pass takes 40-55 ms on one core and a warp 7-10, so a warp that
arrives while a cache builds (another session's, or the next one of its own) starts at once and
the build goes on with the time left over, instead of the warp waiting behind the whole pass. A
render that needs a cache still building waits for it, so tasks still take effect in the order
sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from engine.pipeline.frame_ring import FrameRing, RingSpec
from engine.pipeline.messages import (
    BuildDone,
    BuildTask,
    DropSession,
    FrameDone,
    RenderTask,
    SessionDropped,
    Stop,
    TaskFailed,
    WorkerReady,
)
from engine.render.avatar import Avatar
from engine.render.backends.load import load_backend
from engine.render.backends.stages import FP32, BackendChoice
from engine.render.frame import to_image
from engine.render.frame_inputs import FrameInputs
from engine.render.neural_cache import CacheTerms, NeuralCache
from engine.runtime import release_free_memory, tune_allocator

POLL_S = 0.5  # how often an idle worker checks that its parent is alive
MAX_BATCH = 8  # warps of queued render tasks run as one batched call (several sessions)
# Past this change of one control-vector entry (a weight, or an angle / 45 degrees) since the cache,
# a warp no longer draws the new state: measured on the shipped avatar from its rest, the warp's
# picture against the generator's was 26.8 dB at jawOpen 0.3, 21.0 at 0.6 and 18.8 at 1 (smeared),
# 20.1 dB at yaw +10 and 17.0 at +20 (cracked), 18.2 at a blink (eyes left open). Such frames are
# generated instead (`Worker._reanchor`): a slower frame, but the face the controls ask for.
JUMP_LIMIT = 0.3
CACHES_KEPT = 2  # per session: the cache being used and the one after it
# The build thread's nice value: Linux gives a nice-10 thread about a tenth of the CPU time of a
# nice-0 one when both want a core, so warps (and the server's encoder, and the browser beside
# it) run first while a build uses what they leave.
BUILD_NICE = 10


@dataclass(frozen=True)
class WorkerSettings:
    """index: the worker's number; device: "cpu" or "cuda:i"; threads: torch intra-op threads;
    jitter_ms: a random sleep of up to this before every task (tests of ordering only);
    backend: how the generator and warp run (engine.render.backends, chosen by the parent);
    jump_limit: a warp whose controls differ from its cache's by more than this (largest change
    of one control-vector entry) is rendered by the generator instead (None: always warp);
    background_builds: build caches on a lower-priority thread while warps go on (the CPU);
    prepare_caches: prepare every cache for warping as soon as it is built (off when nothing
    will warp: the generator schedule)."""

    index: int
    avatar_path: Path
    device: str
    threads: int
    ring: RingSpec
    jitter_ms: float = 0.0
    backend: BackendChoice = FP32
    jump_limit: float | None = JUMP_LIMIT
    background_builds: bool = False
    prepare_caches: bool = True


@dataclass
class _Kept:
    cache: NeuralCache
    image: torch.Tensor  # (1, 3, H, W) the generator's picture of the cache's own frame
    ready: float
    # Whether the warp stage has prepared the cache (`Avatar.prepared`): done while the worker
    # waits for its next task, or by the first warp from it, never on the generator frame's path.
    prepared: bool = False


class Worker:
    """The worker's state; `run` is its loop. Separate from the process entry for tests."""

    def __init__(
        self,
        settings: WorkerSettings,
        avatar: Avatar,
        ring: FrameRing,
        send: Callable[[Any], None] | None = None,
    ) -> None:
        """`send` passes a result to the parent from any thread; background builds need it."""
        self.settings = settings
        self.avatar = avatar
        self.ring = ring
        self.caches: dict[int, dict[tuple[int, int], _Kept]] = {}  # session -> (epoch, id) -> kept
        self._send = send
        self._lock = threading.Lock()  # `caches` and `_building`, shared with the build thread
        # A runtime's generator has one inference request: its passes (the build thread's, a
        # re-anchor's) take turns. Torch's may overlap, so that a re-anchor never waits behind a
        # build the warps are starving of CPU.
        exported = settings.backend.generator.runtime != "torch"
        self._generator_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if exported else contextlib.nullcontext()
        )
        self._preparing = threading.Lock()  # a cache is prepared once, by one thread
        self._building: dict[tuple[int, int, int], Future[None]] = {}  # (session, epoch, cache)
        self._builder: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the build thread (a build under way is finished, queued ones are dropped)."""
        if self._builder is not None:
            self._builder.shutdown(wait=True, cancel_futures=True)
            self._builder = None

    def handle(self, task: Any) -> Any:
        """Run one task; returns its result record."""
        if self.settings.jitter_ms > 0:
            time.sleep(random.uniform(0.0, self.settings.jitter_ms) / 1000.0)
        if isinstance(task, BuildTask):
            if self.settings.background_builds and self._send is not None:
                self._build_later(task)
                return None  # the build thread sends its result
            return self.build(task)
        if isinstance(task, RenderTask):
            return self.render(task)
        if isinstance(task, DropSession):
            self._wait_builds(lambda key: key[0] == task.session)
            with self._lock:
                self.caches.pop(task.session, None)
                idle = not self.caches
            if idle:  # give what the sessions used back to the device and OS
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                release_free_memory()
            return SessionDropped(
                self.settings.index, task.session, self._sessions_held(), self._device_mb()
            )
        raise TypeError(f"unknown task {type(task).__name__}")

    @torch.inference_mode()
    def build(self, task: BuildTask) -> BuildDone:
        start = time.monotonic()
        x = self.avatar.inputs([task.controls])
        with self._generator_lock:
            rendered, cache = self.avatar.generate(x, prepare=False)
        self._sync()
        finished = time.monotonic()
        with self._lock:
            kept = self.caches.setdefault(task.session, {})
            kept[(task.epoch, task.cache)] = _Kept(cache, rendered.image, finished)
            for key in sorted(kept)[:-CACHES_KEPT]:  # older epochs sort first, then older caches
                del kept[key]
        return BuildDone(
            self.settings.index,
            task.session,
            task.epoch,
            task.cache,
            finished,
            (finished - start) * 1000.0,
            self._sessions_held(),
            self._device_mb(),
        )

    def _build_later(self, task: BuildTask) -> None:
        """Queue `task` on the build thread; renders that need its cache wait for it."""
        if self._builder is None:
            self._builder = ThreadPoolExecutor(1, "build", initializer=_lower_priority)
        key = (task.session, task.epoch, task.cache)
        with self._lock:
            self._building[key] = self._builder.submit(self._build_and_send, task, key)

    def _build_and_send(self, task: BuildTask, key: tuple[int, int, int]) -> None:
        result: BuildDone | TaskFailed | None
        try:
            result = self.build(task)
        except Exception as exc:
            traceback.print_exc()
            result = self.failure(task, exc)
        with self._lock:
            self._building.pop(key, None)  # renders waiting for it go on
            kept = self.caches.get(task.session, {}).get(key[1:])
        if kept is not None and self.settings.prepare_caches:
            # Before the news: frames the live dispatcher moves to it find it ready to warp.
            self._ready(kept)
        assert self._send is not None
        self._send(result)

    def _wait_builds(self, which: Callable[[tuple[int, int, int]], bool]) -> None:
        """Wait until the queued builds `which` selects (by (session, epoch, cache)) are done."""
        with self._lock:
            pending = [f for key, f in self._building.items() if which(key)]
        for future in pending:
            with contextlib.suppress(Exception):  # a failed build reported itself
                future.result()

    def _kept(self, task: RenderTask) -> _Kept | None:
        """The cache `task` names, once built (waiting for its build if it is under way)."""
        key = (task.session, task.epoch, task.cache)
        self._wait_builds(lambda k: k == key)
        with self._lock:
            return self.caches.get(task.session, {}).get((task.epoch, task.cache))

    def _sessions_held(self) -> int:
        with self._lock:
            return len(self.caches)

    @torch.inference_mode()
    def render_batch(self, tasks: list[RenderTask]) -> list[FrameDone | TaskFailed]:
        """Render tasks waiting together (usually several sessions' frames): every warp in one
        batched call, so a worker serving S sessions pays one network pass per round instead of
        S. Results in task order; a task whose cache is missing fails alone."""
        if self.settings.jitter_ms > 0:
            time.sleep(random.uniform(0.0, self.settings.jitter_ms) / 1000.0)
        held = [self._kept(task) for task in tasks]  # a cache still building is waited for
        started = time.monotonic()
        results: dict[int, FrameDone | TaskFailed] = {}
        warps: list[tuple[int, RenderTask, _Kept]] = []
        for i, (task, kept) in enumerate(zip(tasks, held, strict=True)):
            if kept is None:
                results[i] = self.failure(task, self._missing(task))  # type: ignore[assignment]
            elif task.generated:
                results[i] = self._done(task, kept, kept.image, started, {})
            else:
                warps.append((i, task, self._ready(kept)))
        if warps:
            x = self.avatar.inputs([task.controls for _, task, _ in warps])
            # Rare: frames past the jump limit (generated one by one) and frames of their cache's
            # own controls (its picture); the rest are still warped in one batched call.
            apart = [
                self._jumped(kept.cache, x.controls[b : b + 1])
                or _same(kept.cache, x.controls[b : b + 1])
                for b, (_, _, kept) in enumerate(warps)
            ]
            if any(apart):
                for (i, task, _), alone in zip(warps, apart, strict=True):
                    if alone:
                        results[i] = self.render(task)
                warps = [w for w, alone in zip(warps, apart, strict=True) if not alone]
                if not warps:
                    return [results[i] for i in range(len(tasks))]
                x = self.avatar.inputs([task.controls for _, task, _ in warps])
            self._sync()
            inputs_done = time.monotonic()
            cache = stack_caches([kept.cache for _, _, kept in warps])
            images = self.avatar.warp(cache, x).image  # (B, 3, H, W)
            self._sync()
            stages = {
                "inputs": (inputs_done - started) * 1000.0,
                "warp": (time.monotonic() - inputs_done) * 1000.0,
                "batch": float(len(warps)),
            }
            for b, (i, task, kept) in enumerate(warps):
                drift = _drift(kept.cache, x.controls[b : b + 1])
                results[i] = self._done(task, kept, images[b : b + 1], started, dict(stages), drift)
        return [results[i] for i in range(len(tasks))]

    def _missing(self, task: RenderTask) -> LookupError:
        return LookupError(
            f"worker {self.settings.index} holds no cache {task.cache} (epoch {task.epoch}) "
            f"of session {task.session}: it was never built here or was dropped"
        )

    def _done(
        self,
        task: RenderTask,
        kept: _Kept,
        image: torch.Tensor,
        started: float,
        stages: dict[str, float],
        drift: float = 0.0,
    ) -> FrameDone:
        """Write `image` into the task's ring slot; the record that says so."""
        before_copy = time.monotonic()
        self.ring.write(task.slot, to_image(image))
        finished = time.monotonic()
        stages["to_image"] = (finished - before_copy) * 1000.0
        return FrameDone(
            worker=self.settings.index,
            session=task.session,
            epoch=task.epoch,
            frame=task.frame,
            cache=task.cache,
            generated=task.generated,
            distance=task.distance,
            seq=task.seq,
            slot=task.slot,
            submitted=task.submitted,
            cache_submitted=task.cache_submitted,
            started=started,
            finished=finished,
            cache_ready=kept.ready,
            stages_ms=stages,
            drift=drift,
        )

    @torch.inference_mode()
    def render(self, task: RenderTask) -> FrameDone:
        kept = self._kept(task)  # a cache still building is waited for: not this frame's time
        started = time.monotonic()
        if kept is None:
            raise self._missing(task)
        stages: dict[str, float] = {}
        drift = 0.0
        if task.generated:
            image = kept.image
        else:
            x = self.avatar.inputs([task.controls])
            self._sync()
            inputs_done = time.monotonic()
            stages["inputs"] = (inputs_done - started) * 1000.0
            if self._jumped(kept.cache, x.controls):
                return self._reanchor(task, x, started, stages)
            if _same(kept.cache, x.controls):
                # The controls its cache was made from (a still picture rendered again from the
                # cache built for it): the generator's own picture of them. A warp would redraw
                # it less well: trained from 4 frames apart, it never learned to stand still
                # (it painted the background into his hair).
                done = self._done(task, kept, kept.image, started, stages)
                return dataclasses.replace(done, generated=True, distance=0)
            kept = self._ready(kept)
            drift = _drift(kept.cache, x.controls)
            image = self.avatar.warp(kept.cache, x).image
            self._sync()
            stages["warp"] = (time.monotonic() - inputs_done) * 1000.0
        return self._done(task, kept, image, started, stages, drift)

    def _ready(self, kept: _Kept) -> _Kept:
        """`kept` with its cache prepared for warping (prepared now if the idle time or the build
        thread did not; a preparation under way on the other thread is waited for)."""
        with self._preparing:
            if not kept.prepared:
                kept.cache = self.avatar.prepared(kept.cache)
                kept.prepared = True
        return kept

    @torch.inference_mode()
    def prepare_while_idle(self, waiting: Callable[[], bool]) -> int:
        """Prepare the caches built since (newest first) until a task is `waiting`: a cache's
        preparation (3.3 ms on one core) then costs no frame anything. Returns how many."""
        done = 0
        with self._lock:  # newest first within each session; a build may add some meanwhile
            kept = [
                held[key] for held in self.caches.values() for key in sorted(held, reverse=True)
            ]
        for one in kept:
            if waiting():
                return done
            if not one.prepared:
                self._ready(one)
                done += 1
        return done

    def _jumped(self, cache: NeuralCache, controls: torch.Tensor) -> bool:
        """Whether `controls` (1, D) lie too far from the cache's for a warp to draw them."""
        limit = self.settings.jump_limit
        if limit is None:
            return False
        return bool(_change(cache, controls) > limit)  # in float32, as the control vector is

    def _reanchor(
        self, task: RenderTask, x: FrameInputs, started: float, stages: dict[str, float]
    ) -> FrameDone:
        """A full generator frame instead of a warp too far from its cache, kept as that cache
        from now on: the frames still to come from it warp from the new state."""
        before = time.monotonic()
        with self._generator_lock:
            rendered, cache = self.avatar.generate(x, prepare=False)
        self._sync()
        now = time.monotonic()
        stages["generator"] = (now - before) * 1000.0
        kept = _Kept(cache, rendered.image, now)
        with self._lock:
            self.caches.setdefault(task.session, {})[(task.epoch, task.cache)] = kept
        done = self._done(task, kept, rendered.image, started, stages)
        return dataclasses.replace(done, generated=True, distance=0)

    def _device_mb(self) -> float:
        device = self.avatar.translation.device
        if device.type != "cuda":
            return 0.0
        return torch.cuda.memory_allocated(device) / (1024.0 * 1024.0)

    def _sync(self) -> None:
        if self.avatar.translation.device.type == "cuda":
            torch.cuda.synchronize(self.avatar.translation.device)

    def failure(self, task: Any, exc: BaseException) -> TaskFailed | None:
        if isinstance(task, BuildTask | RenderTask):
            frame = task.frame if isinstance(task, RenderTask) else None
            message = f"{type(exc).__name__}: {exc}"
            return TaskFailed(
                self.settings.index, task.session, task.epoch, frame, task.cache, message
            )
        return None


def _change(cache: NeuralCache, controls: torch.Tensor) -> torch.Tensor:
    """The largest change of one control-vector entry from the cache's to `controls` (1, D)."""
    return (controls.float() - cache.controls.float()).abs().max()


def _drift(cache: NeuralCache, controls: torch.Tensor) -> float:
    return float(_change(cache, controls))


def _same(cache: NeuralCache, controls: torch.Tensor) -> bool:
    """Whether `controls` (1, D) are exactly the cache's own."""
    return bool(_change(cache, controls) == 0)


def _lower_priority() -> None:
    """Run the calling thread at BUILD_NICE (Linux: a thread id is a process id to setpriority)."""
    with contextlib.suppress(OSError, AttributeError):  # elsewhere builds keep the worker's
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BUILD_NICE)


def stack_caches(caches: list[NeuralCache]) -> NeuralCache:
    """One cache of batch B from B caches of batch 1 (the same avatar: the same layers)."""
    if len(caches) == 1:
        return caches[0]

    def cat(name: str) -> torch.Tensor | CacheTerms | None:
        parts = [getattr(c, name) for c in caches]
        if any(p is None for p in parts):  # terms some caches lack: the warp makes them all
            return None
        return CacheTerms.stack(parts) if name == "terms" else torch.cat(parts)

    stacked = {f.name: cat(f.name) for f in dataclasses.fields(NeuralCache)}
    return NeuralCache(**stacked)  # type: ignore[arg-type]


def _queued_renders(first: Any, tasks: Connection) -> tuple[list[Any], Any]:
    """`first` and the render tasks queued right behind it (up to MAX_BATCH), and the task that
    ended the run (None if the queue ran dry). Tasks keep their order: a build or a drop ends a
    batch, so nothing is reordered across it."""
    batch = [first]
    if not isinstance(first, RenderTask):
        return batch, None
    while len(batch) < MAX_BATCH and tasks.poll(0):
        try:
            task = tasks.recv()
        except EOFError:
            return batch, Stop()
        if not isinstance(task, RenderTask):
            return batch, task
        batch.append(task)
    return batch, None


def _run(worker: Worker, batch: list[Any]) -> list[Any]:
    """Results of a batch of tasks; a failure is reported to its task's session and the worker
    goes on."""
    try:
        if len(batch) > 1:
            return worker.render_batch(batch)
        result = worker.handle(batch[0])
        return [] if result is None else [result]
    except Exception as exc:
        traceback.print_exc()
        failures = [worker.failure(task, exc) for task in batch]
        return [f for f in failures if f is not None]


def run_worker(settings: WorkerSettings, tasks: Connection, results: Connection) -> None:
    """Process entry point (spawned): load the avatar, attach the ring, serve tasks until Stop.

    Each worker has its own pair of pipes: a worker killed mid-write can then corrupt only its own
    channel (a shared multiprocessing.Queue would stay locked for every other worker)."""
    parent = os.getppid()
    torch.set_num_threads(settings.threads)
    tune_allocator()
    avatar = Avatar.load(settings.avatar_path, settings.device).prepare_for_inference()
    load_backend(avatar, settings.backend, settings.threads)
    ring = FrameRing.attach(settings.ring)
    sending = threading.Lock()  # the build thread answers on the same pipe

    def send(message: Any) -> None:
        with sending:
            results.send(message)

    worker = Worker(settings, avatar, ring, send)
    send(WorkerReady(settings.index, os.getpid()))
    try:
        while True:
            if not tasks.poll(POLL_S):  # idle: leave if the parent is gone
                if os.getppid() != parent:
                    return
                continue
            try:
                task = tasks.recv()
            except EOFError:  # the parent closed its end
                return
            while task is not None:
                if isinstance(task, Stop):
                    return
                # Every warp backend takes a batch (OpenVINO compiles each batch size once).
                batch, task = _queued_renders(task, tasks)
                for result in _run(worker, batch):
                    send(result)
            try:
                worker.prepare_while_idle(tasks.poll)
            except Exception:  # left unprepared: the task that warps from it fails by name
                traceback.print_exc()
    finally:
        worker.close()
        ring.close()
