"""Churn: many sessions come and go, half of their clients vanishing without a word; afterwards the
server must hold exactly what it held before.

    python -m bench.churn [--url URL] [--cycles N] --json OUT

A graceful cycle connects a Python WebRTC viewer (`bench.rtc_client`) in this process, drives the
avatar until a picture with its seq comes back, and closes the connection. An abrupt cycle runs the
viewer in a child process (`python -m bench.rtc_client URL`) and kills it with SIGKILL once it is
streaming: no DTLS close, no SCTP abort, nothing; the server must notice the silence by itself.
Two warm-up cycles (one of each) come first; then the server's `resources` (GET /api/stats) are the
baseline. After the last cycle and once every session is gone, `leaks` holds, per resource counted,
how many more the server holds than at the baseline (peer connections, pipeline and worker-side
sessions, the workers' CUDA tensor memory, asyncio tasks, threads, file descriptors,
shared-memory segments; all 0 when nothing leaked), and `rss_growth` the relative change of the server's and its workers' resident memory.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import aiohttp

from bench import rtc_client
from bench.local_server import ROOT, api_stats, run_against, server_parser, write_report

COUNTED = (
    "peer_connections",
    "pipeline_sessions",
    "worker_sessions",
    "worker_device_mb",
    "asyncio_tasks",
    "threads",
    "fds",
    "shm_segments",
)
SETTLE_S = 60.0  # the longest wait for vanished peers to be noticed and everything freed
CLIENT_START_S = 60.0  # a child viewer: Python start, aiortc import, connection, first picture
FULL_RETRY_S = 1.0  # a 503 (server full): wait this long and try again
MEMORY_EVERY = 10  # cycles between memory samples (sessions may be open then)
SERVER_MAX_SESSIONS = 16  # the own server's --max-sessions: room for the vanished ones lingering


class ServerFull(Exception):
    pass


async def graceful_cycle(http: aiohttp.ClientSession, url: str) -> None:
    try:
        viewer = await rtc_client.connect(http, url)
    except RuntimeError as exc:
        if "503" in str(exc):
            raise ServerFull from exc
        raise
    try:
        viewer.send({"type": "probe", "on": True})
        seq = viewer.control(pose={"yaw": 10.0}, expression={"jawOpen": 0.5})
        await viewer.frame_with_seq(seq)
    finally:
        await viewer.close()


async def abrupt_cycle(url: str) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.rtc_client",
        url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), CLIENT_START_S)
        if not line.startswith(b"streaming"):
            assert child.stderr is not None
            err = (await child.stderr.read()).decode(errors="replace")
            if "503" in err:
                raise ServerFull
            raise RuntimeError(f"the child viewer did not stream: {err[-500:]}")
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()


async def _settle(http: aiohttp.ClientSession, url: str, deadline_s: float) -> dict[str, Any]:
    """Wait until no session is open anywhere in the server; return /api/stats then."""
    deadline = time.monotonic() + deadline_s
    while True:
        stats = await api_stats(http, url)
        held = stats["resources"]
        if not stats["sessions"] and not any(
            held[k] for k in ("peer_connections", "pipeline_sessions", "worker_sessions")
        ):
            return stats
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.5)


async def churn(url: str, cycles: int) -> dict[str, Any]:
    full_waits = 0
    most_open = 0
    async with aiohttp.ClientSession() as http:

        async def cycle(abrupt: bool) -> None:
            nonlocal full_waits, most_open
            while True:
                try:
                    if abrupt:
                        await abrupt_cycle(url)
                    else:
                        await graceful_cycle(http, url)
                except ServerFull:
                    full_waits += 1
                    await asyncio.sleep(FULL_RETRY_S)
                    continue
                most_open = max(most_open, len((await api_stats(http, url))["sessions"]))
                return

        await cycle(False)
        await cycle(True)
        before = await _settle(http, url, SETTLE_S)
        start = time.monotonic()
        memory = []
        for i in range(cycles):
            await cycle(abrupt=i % 2 == 1)
            if (i + 1) % MEMORY_EVERY == 0:
                held = (await api_stats(http, url))["resources"]
                memory.append(round(held["rss_mb"] + held["workers_rss_mb"], 1))
        churn_s = time.monotonic() - start
        settle_start = time.monotonic()
        after = await _settle(http, url, SETTLE_S)
        settle_s = time.monotonic() - settle_start
    base, end = before["resources"], after["resources"]
    leaks = {k: end[k] - base[k] for k in COUNTED if end[k] is not None and base[k] is not None}
    rss_before = base["rss_mb"] + base["workers_rss_mb"]
    rss_after = end["rss_mb"] + end["workers_rss_mb"]
    closed = {reason: n - before["closed"].get(reason, 0) for reason, n in after["closed"].items()}
    return {
        "cycles": cycles,
        "graceful": cycles - cycles // 2,
        "abrupt": cycles // 2,
        "seconds": round(churn_s, 1),
        "settle_seconds": round(settle_s, 1),
        "most_sessions_open": most_open,
        "server_full_waits": full_waits,
        "closed": closed,
        "leaks": leaks,
        "leaked": sum(abs(v) for v in leaks.values() if v > 0),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "rss_growth": round((rss_after - rss_before) / rss_before, 4),
        f"rss_mb_every_{MEMORY_EVERY}_cycles": memory,
        "resources_before": base,
        "resources_after": end,
        "restarts": sum(w["restarts"] for w in after["workers"]),
        "url": url,
    }


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.churn", __doc__)
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args(argv)
    if args.cycles < 2:
        parser.error("--cycles must be at least 2 (one graceful, one abrupt)")
    report = run_against(
        args.url,
        args.avatar,
        lambda url, _pid: asyncio.run(churn(url, args.cycles)),
        ["--max-sessions", str(SERVER_MAX_SESSIONS)],
    )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
