"""Stills (`GET /still.png`) rendered where they cannot slow a live call.

A still is a full generator frame: 30 at once took seconds of the server's own CPU, beside the
encoders of the live sessions. So stills run in one child process at the lowest priority (nice
19, and Linux's idle scheduling class): the kernel gives the render workers and the encoders the
CPU first, and a still gets what is left; while live sessions are open, stills also keep to LIVE_SHARE of a core. Past `queue_limit`
stills waiting or rendering, one more is refused at once (`StillsBusy`, an
HTTP 429 with Retry-After) rather than queued: a queue that only grows holds requests their clients
have long given up on. A child that dies fails only the still it was rendering, and the next still
starts a new one; a child whose parent is gone leaves by itself (no orphan keeps rendering).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.controls import Controls
from engine.render.avatar import Avatar

LOG = logging.getLogger(__name__)

NICENESS = 19  # the lowest priority: stills get only the CPU that live sessions leave
POLL_S = 0.5  # how often a waiting side checks that the other side is still alive
START_TIMEOUT_S = 300.0  # spawn + import torch + load the avatar, on a slow busy machine
STOP_TIMEOUT_S = 5.0  # a child that does not stop by then is killed
RETRY_AFTER_S = 1  # what a refused still is told to wait
# While a live session is open, stills take at most this share of one core, on average: the next
# still waits until its predecessor's CPU time is that share of the time since it began. The idle
# scheduling class keeps the CPU for the live sessions, but not the caches, memory bandwidth or a
# hyperthread's sibling core that a still shares with them (measured: 1.6 stills a second beside a
# session raised its motion-to-photon p95 by ~20%).
LIVE_SHARE = 0.1


class StillsBusy(Exception):
    """Too many stills waiting or rendering; ask again after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# ------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class _Ready:
    pid: int


@dataclass(frozen=True)
class _Still:
    png: bytes
    cpu_s: float  # the child's CPU time for it (render and encode)


@dataclass(frozen=True)
class _Failed:
    message: str


@dataclass(frozen=True)
class _Stop:
    pass


# ------------------------------------------------------------------------------- the child


def _lower_priority() -> None:
    """Nice the whole process, and where the OS has it put it in the idle scheduling class (Linux
    SCHED_IDLE: it runs only on CPU time nothing else wants; nice 19 alone still takes about 1.5%
    of a contended core per thread). On Linux both belong to each thread and set only the
    caller's: threads already running (started by imports) are set one by one; those started
    later inherit them from the main thread."""
    niceness = os.nice(NICENESS)
    idle = getattr(os, "SCHED_IDLE", None)
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the main thread's values are all we can set
        threads = [0]
    for tid in threads:
        with contextlib.suppress(OSError):  # a thread that has just ended
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
            if idle is not None:
                os.sched_setscheduler(tid, idle, os.sched_param(0))


def _encode_png(picture: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return out.getvalue()


def _serve(avatar_path: Path, threads: int, requests: Connection, replies: Connection) -> None:
    """Process entry point (spawned): lower its priority, load the avatar, then answer each
    Controls with a `_Still` or a `_Failed`, until `_Stop`, a closed pipe or a gone parent."""
    parent = os.getppid()
    _lower_priority()  # before torch starts its thread pool, so the pool inherits it
    torch.set_num_threads(threads)
    try:
        avatar = Avatar.load(avatar_path).prepare_for_inference()
    except Exception as exc:
        replies.send(_Failed(f"{type(exc).__name__}: {exc}"))
        return
    replies.send(_Ready(os.getpid()))
    while True:
        if not requests.poll(POLL_S):  # idle: leave if the parent is gone
            if os.getppid() != parent:
                return
            continue
        try:
            request = requests.recv()
        except EOFError:  # the parent closed its end
            return
        if isinstance(request, _Stop):
            return
        try:
            began = time.process_time()
            png = _encode_png(avatar.render(request))
            reply: _Still | _Failed = _Still(png, time.process_time() - began)
        except Exception as exc:
            traceback.print_exc()
            reply = _Failed(f"{type(exc).__name__}: {exc}")
        try:
            replies.send(reply)
        except OSError:  # the parent is gone
            return


# ------------------------------------------------------------------------------- the parent


class StillRenderer:
    """One niced child process rendering stills, behind a queue of at most `queue_limit`.

    Use from one event loop. The child and its pipes belong to one thread of a private executor:
    every still is one job there (send the controls, wait for the picture), so stills reach the
    child one at a time and in order, and the event loop never waits on a pipe."""

    def __init__(
        self,
        avatar_path: Path,
        queue_limit: int,
        threads: int,
        live: Callable[[], bool] = lambda: False,
    ) -> None:
        """live: whether a live session is open now (called from the executor's thread)."""
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be at least 1, got {queue_limit}")
        self.avatar_path = avatar_path
        self.queue_limit = queue_limit
        self.threads = threads
        self._ctx = multiprocessing.get_context("spawn")
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stills")
        self._pending: set[concurrent.futures.Future[bytes]] = set()
        # Owned by the executor's thread (stats() only reads them):
        self._process: BaseProcess | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._pid: int | None = None
        self._spawned = 0
        self._rendering = False
        self._live = live
        self._next_at = 0.0  # time.monotonic() before which no still starts while live
        self._paced_s = 0.0  # time stills waited for LIVE_SHARE
        # Owned by the event loop:
        self._rendered = 0
        self._refused = 0
        self._failed = 0
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    @classmethod
    async def start(
        cls,
        avatar_path: Path,
        queue_limit: int = 4,
        threads: int = 1,
        live: Callable[[], bool] = lambda: False,
    ) -> StillRenderer:
        """Spawn the child and wait until it has loaded the avatar (seconds)."""
        if not avatar_path.exists():
            raise FileNotFoundError(f"avatar file not found: {avatar_path}")
        renderer = cls(avatar_path, queue_limit, threads, live)
        try:
            await asyncio.get_running_loop().run_in_executor(
                renderer._executor, renderer._ensure_child
            )
        except BaseException:
            await renderer.close()
            raise
        return renderer

    async def render_png(self, controls: Controls) -> bytes:
        """The still of `controls` as PNG bytes. StillsBusy at once when `queue_limit` stills are
        already waiting or rendering; RuntimeError when the child died rendering it (the next
        still starts a new child) or the renderer is closed."""
        if self._closed:
            raise RuntimeError("the still renderer is closed")
        self._pending = {f for f in self._pending if not f.done()}
        if len(self._pending) >= self.queue_limit:
            self._refused += 1
            raise StillsBusy(f"{len(self._pending)} stills waiting or rendering, the most allowed")
        job = self._executor.submit(self._round_trip, controls)
        self._pending.add(job)
        try:
            png = await asyncio.wrap_future(job)
        except (RuntimeError, OSError):
            self._failed += 1
            raise
        self._rendered += 1
        return png

    def stats(self) -> dict[str, int | float | None]:
        """queued: stills waiting or rendering now; rendering: 1 while the child has one;
        rendered, refused (busy), failed, restarts: since start; pid: the child's (None when
        there is none, as between a death and the next still); paced_s: seconds stills waited
        to keep to LIVE_SHARE beside live sessions."""
        return {
            "queued": sum(not f.done() for f in self._pending),
            "rendering": int(self._rendering),
            "rendered": self._rendered,
            "refused": self._refused,
            "failed": self._failed,
            "restarts": max(0, self._spawned - 1),
            "pid": self._pid,
            "paced_s": round(self._paced_s, 3),
        }

    async def close(self) -> None:
        """Fail the stills still queued, stop the child (killed if it does not stop), end the
        executor's thread. Idempotent; a second call waits for the first."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._stop_child)  # after the jobs queued
        self._executor.shutdown(wait=True)  # its last job is done: returns at once

    # ---------------------------------------------------------------- the executor's thread

    def _round_trip(self, controls: Controls) -> bytes:
        if self._closed:
            raise RuntimeError("the still renderer is closed")
        self._ensure_child()
        assert self._requests is not None and self._replies is not None
        wait = self._next_at - time.monotonic()
        if wait > 0 and self._live():
            time.sleep(wait)
            self._paced_s += wait
        began = time.monotonic()
        try:
            self._requests.send(controls)
            self._rendering = True
            reply = self._wait_reply(self._replies)
        except (EOFError, OSError) as exc:
            raise self._died("rendering a still") from exc
        finally:
            self._rendering = False
        if isinstance(reply, _Failed):
            raise RuntimeError(f"the still renderer failed to render this still: {reply.message}")
        if not isinstance(reply, _Still):
            raise RuntimeError(f"the still renderer answered {type(reply).__name__}, not a still")
        # The next still starts once this one's CPU is LIVE_SHARE of the time since it began.
        self._next_at = began + reply.cpu_s / LIVE_SHARE
        return reply.png

    def _wait_reply(self, replies: Connection, timeout: float | None = None) -> object:
        """The child's next message. EOFError when it died; RuntimeError when the renderer is
        closed meanwhile or nothing came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not replies.poll(POLL_S):
            if self._process is None or not self._process.is_alive():
                raise EOFError("the child exited")
            if self._closed:
                raise RuntimeError("the still renderer was closed before this still was done")
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"the still renderer did not start within {timeout:.0f} s")
        return replies.recv()

    def _ensure_child(self) -> None:
        """Spawn the child unless one is alive, and wait until it has loaded the avatar."""
        if self._process is not None and self._process.is_alive():
            return
        if self._process is not None:
            code = self._process.exitcode
            LOG.error("still renderer %s died while idle (exit code %s)", self._pid, code)
            self._drop_child()
        requests_reader, requests_writer = self._ctx.Pipe(duplex=False)
        replies_reader, replies_writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_serve,
            args=(self.avatar_path, self.threads, requests_reader, replies_writer),
            name="still-renderer",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            for conn in (requests_reader, requests_writer, replies_reader, replies_writer):
                conn.close()
            raise
        requests_reader.close()  # the child holds its own copies
        replies_writer.close()
        self._process, self._requests, self._replies = process, requests_writer, replies_reader
        self._spawned += 1
        if self._spawned > 1:
            LOG.warning("still renderer restarted (%d restarts)", self._spawned - 1)
        try:
            ready = self._wait_reply(replies_reader, START_TIMEOUT_S)
        except (EOFError, OSError) as exc:
            raise self._died("starting") from exc
        except RuntimeError:
            self._drop_child()
            raise
        if not isinstance(ready, _Ready):
            self._drop_child()
            message = ready.message if isinstance(ready, _Failed) else repr(ready)
            raise RuntimeError(f"the still renderer could not load {self.avatar_path}: {message}")
        self._pid = ready.pid

    def _died(self, doing: str) -> RuntimeError:
        """Clear away a child found dead; the error that says so."""
        pid = self._process.pid if self._process is not None else self._pid
        code = None
        if self._process is not None:
            self._process.join(STOP_TIMEOUT_S)
            code = self._process.exitcode
        self._drop_child()
        LOG.error("still renderer %s died %s (exit code %s)", pid, doing, code)
        return RuntimeError(
            f"the still renderer process {pid} died {doing} (exit code {code}); "
            "the next still starts a new one"
        )

    def _drop_child(self) -> None:
        """Kill the child if it still runs, reap it, close the pipes."""
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(STOP_TIMEOUT_S)
            if self._process.exitcode is not None:  # reaped: free its sentinel
                self._process.close()
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        self._process = self._requests = self._replies = None
        self._pid = None

    def _stop_child(self) -> None:
        """Ask the child to stop, kill it if it has not by STOP_TIMEOUT_S."""
        if self._process is None:
            return
        if self._process.is_alive() and self._requests is not None:
            with contextlib.suppress(OSError):  # it died meanwhile
                self._requests.send(_Stop())
            self._process.join(STOP_TIMEOUT_S)
        self._drop_child()
