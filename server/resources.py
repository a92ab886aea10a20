"""What the server holds right now: the figures in which a leak would show.

Read by `/api/stats` ("resources") and `/metrics`, and compared before and after a churn of
sessions by `bench.churn` and the tests: after every session has closed, the peer connections,
pipeline sessions and worker-side session caches are back to zero and the process's tasks,
threads, file descriptors and shared-memory mappings back to where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from typing import Any

import psutil

MB = 1024.0 * 1024.0


def _shm_mappings(process: psutil.Process) -> int:
    """Distinct POSIX shared-memory segments the process has mapped (Linux; 0 elsewhere).

    Read from /proc/PID/maps (0.5 ms), not psutil's memory_maps, which parses smaps (12 ms here):
    this runs on the event loop, which every live session's frames pass through."""
    with contextlib.suppress(OSError), open(f"/proc/{process.pid}/maps") as maps:
        return len({line.split(None, 5)[-1].strip() for line in maps if "/dev/shm/" in line})
    with contextlib.suppress(psutil.Error, NotImplementedError, AttributeError):
        return len({m.path for m in process.memory_maps() if m.path.startswith("/dev/shm/")})
    return 0


def _in_executor(thread: threading.Thread) -> bool:
    return thread.name.startswith("asyncio_")  # asyncio names its default executor's threads so


def rss_mb(pids: Iterable[int]) -> float:
    """Resident memory of the processes `pids` together, MB to 0.1 (one that has exited counts 0:
    a worker may be restarting)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return round(total / MB, 1)


def snapshot(
    peer_connections: int, pipeline_sessions: int, workers: list[dict[str, Any]]
) -> dict[str, Any]:
    """This process's holdings (call on the event loop: it counts the loop's tasks).

    peer_connections: RTCPeerConnections not yet closed; pipeline_sessions: sessions the pipeline
    knows; workers: `Pipeline.worker_states()` (their pids and session counts)."""
    me = psutil.Process()
    fds = None
    with contextlib.suppress(psutil.Error, AttributeError):  # num_fds is POSIX only
        fds = me.num_fds()
    return {
        "peer_connections": peer_connections,
        "pipeline_sessions": pipeline_sessions,
        "worker_sessions": sum(w.get("sessions_held", 0) for w in workers),
        "worker_device_mb": round(sum(w.get("device_mb", 0.0) for w in workers), 2),
        "asyncio_tasks": len(asyncio.all_tasks()),
        # The loop's default executor (aiortc encodes there) grows on demand to a fixed size:
        # counted apart, so that `threads` only grows when something leaks.
        "threads": sum(not _in_executor(t) for t in threading.enumerate()),
        "executor_threads": sum(_in_executor(t) for t in threading.enumerate()),
        "fds": fds,
        "shm_segments": _shm_mappings(me),
        "rss_mb": rss_mb([me.pid]),
        "workers_rss_mb": rss_mb(w["pid"] for w in workers if w.get("pid")),
    }
