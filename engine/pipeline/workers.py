"""The parent's side of the render worker processes: starting them, their pipes, waiting until they
are ready, restarting one that died, and stopping them all without leaving a process or a shared
memory segment behind.

The dispatcher decides what each worker does; this module only keeps the processes there for it.
A worker's death is not handled here when it happens: the dispatcher looks (every `WATCH_S` at the
longest, woken early by the process's sentinel) because the sessions must start a new epoch too.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.multiprocessing as tmp

from engine.pipeline.frame_ring import FrameRing
from engine.pipeline.messages import Stop
from engine.pipeline.settings import RING_SLOTS, PipelineSettings
from engine.pipeline.worker import WorkerSettings, run_worker

WATCH_S = 0.2  # the dispatcher's longest sleep: worker deaths are seen within this
START_TIMEOUT_S = 120.0  # loading an avatar and warming a device
STOP_TIMEOUT_S = 5.0


@dataclass
class WorkerHandle:
    """One worker as the parent sees it: its process, pipes and ring, and what it has in flight."""

    index: int
    settings: WorkerSettings
    ring: FrameRing
    process: Any = None
    tasks: Any = None  # Connection: parent -> worker
    results: Any = None  # Connection: worker -> parent
    ready: bool = False
    in_flight: dict[tuple[int, int], int] = field(default_factory=dict)  # (session, frame) -> slot
    free_slots: list[int] = field(default_factory=list)
    builds: int = 0  # build tasks sent and not yet answered
    restarts: int = 0
    sessions_held: int = 0  # sessions the worker keeps caches for, as it last reported
    device_mb: float = 0.0  # CUDA tensor memory it last reported (0 on the CPU)

    def send(self, message: object) -> None:
        with contextlib.suppress(OSError):  # a dead worker's pipe: the watchdog restarts it
            self.tasks.send(message)

    def exited(self) -> bool:
        """True when its process was started and is no longer alive."""
        return self.process is not None and not self.process.is_alive()

    def close_pipes(self) -> None:
        for conn in (self.tasks, self.results):
            if conn is not None:
                conn.close()
        self.tasks = self.results = None


class WorkerPool:
    """The worker processes of one pipeline, one per device in its settings."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.workers: list[WorkerHandle] = []
        self.restarts = 0
        self._ctx = tmp.get_context("spawn")

    def start(self, resolution: int, on_message: Callable[[Any], None]) -> None:
        """Spawn the workers and wait until every one has reported ready; their messages meanwhile
        go to `on_message`. On failure the caller closes the pool (whatever was made is freed)."""
        devices = self.settings.worker_devices()
        threads = self.settings.worker_threads()
        for i, device in enumerate(devices):
            ring = FrameRing.create(RING_SLOTS, resolution, resolution)
            ws = WorkerSettings(
                i,
                self.settings.avatar_path,
                device,
                threads,
                ring.spec,
                self.settings.jitter_ms,
                self.settings.backend,
                self.settings.worker_jump_limit,
                # One thread each only: two OpenMP teams in one process (the build thread's and
                # the warps') spin against each other; a 2-thread generator pass went 32 -> 40 ms.
                background_builds=device == "cpu" and threads == 1,
                prepare_caches=self.settings.schedule.num_warps > 0,
            )
            self.workers.append(WorkerHandle(i, ws, ring, free_slots=list(range(RING_SLOTS))))
        for w in self.workers:
            self._spawn(w)
        self._wait_ready(time.monotonic() + START_TIMEOUT_S, on_message)

    def close(self) -> None:
        """Stop the workers (killing any that do not stop), free the shared memory. Idempotent."""
        for w in self.workers:
            if w.process is not None and w.process.is_alive():
                w.send(Stop())
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in self.workers:
            if w.process is None:
                continue
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=STOP_TIMEOUT_S)
            w.close_pipes()
            w.process = None
        for w in self.workers:
            w.ring.close()
        self.workers = []

    def restart(self, w: WorkerHandle) -> list[tuple[int, int]]:
        """Start a new process for a worker that died; returns the (session, frame) pairs that were
        in flight on it (they will never come). It is not ready until it reports WorkerReady."""
        lost = list(w.in_flight)
        w.in_flight.clear()
        w.builds = 0
        w.free_slots = list(range(RING_SLOTS))
        w.close_pipes()
        w.restarts += 1
        w.sessions_held, w.device_mb = 0, 0.0  # a new process holds nothing yet
        self.restarts += 1
        self._spawn(w)  # the avatar takes seconds to load
        return lost

    def receive(self, timeout: float) -> list[Any]:
        """Every result waiting on any worker's pipe, after waiting up to `timeout` s for one (or
        for a worker to exit: its sentinel wakes the wait)."""
        conns = {w.results: w for w in self.workers if w.results is not None}
        sentinels = [w.process.sentinel for w in self.workers if w.process is not None]
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

    def up(self) -> tuple[int, ...]:
        """The indices of the workers running and ready for tasks."""
        return tuple(w.index for w in self.workers if w.ready and w.process is not None)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None]

    def states(self) -> list[dict[str, Any]]:
        """Per worker: see `Pipeline.worker_states`."""
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
            for w in self.workers
        ]

    def _spawn(self, w: WorkerHandle) -> None:
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

    def _wait_ready(self, deadline: float, on_message: Callable[[Any], None]) -> None:
        while not all(w.ready for w in self.workers):
            for w in self.workers:
                if not w.process.is_alive():
                    raise RuntimeError(
                        f"render worker {w.index} exited with code {w.process.exitcode} while "
                        "starting (see its output above)"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"render workers not ready after {START_TIMEOUT_S:.0f} s")
            for msg in self.receive(WATCH_S):
                on_message(msg)


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
