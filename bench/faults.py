"""Worker faults: render workers killed with SIGKILL mid-stream, one after another; each time the
stream must resume within a second, the session survive, and /api/stats and /metrics count the
restart.

    python -m bench.faults [--url URL] [--kills N] --json OUT

A viewer (`bench.rtc_client`) drives the avatar with a moving control at 30 Hz, probe stamps on.
Each round waits until every worker is up and ready, kills worker `round mod workers` (its pid from
/api/stats, so the server must run on this machine), and times `resumed_s`: from the kill to the
first picture stamped with a control sent after it. `back_s` is when /api/stats shows the worker
alive and ready again (a new process loading the avatar), `pictures_first_s` how many pictures
arrived in the second after the kill (the other workers carry the stream meanwhile) against
`pictures_before_s` in the second before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import statistics
import time
import urllib.parse
from typing import Any

import aiohttp

from bench import rtc_client
from bench.local_server import api_stats, run_against, server_parser, write_report
from server.ice import use_loopback_only

CONTROL_HZ = 30.0
RESUME_TARGET_S = 1.0  # the figure
READY_WAIT_S = 180.0  # a restarted worker loads the avatar again
STEADY_S = 2.0  # streaming between a worker being back and the next kill
LOOPBACK = ("127.0.0.1", "localhost", "::1")


async def _all_ready(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        workers: list[dict[str, Any]] = (await api_stats(http, url))["workers"]
        if all(w["alive"] and w["ready"] for w in workers):
            return workers
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not all ready after {READY_WAIT_S:.0f} s: {workers}")
        await asyncio.sleep(0.05)


async def _drive(viewer: rtc_client.Viewer) -> None:
    """Controls at CONTROL_HZ until cancelled: the head sweeps left and right, the jaw opens."""
    start = time.monotonic()
    while True:
        t = time.monotonic() - start
        viewer.control(
            pose={"yaw": 8.0 * math.sin(t)}, expression={"jawOpen": 0.5 + 0.5 * math.sin(2 * t)}
        )
        await asyncio.sleep(1.0 / CONTROL_HZ)


async def _pictures(viewer: rtc_client.Viewer, log: list[tuple[float, int]]) -> None:
    """Every stamped picture's (arrival, seq), until cancelled."""
    while True:
        got = await viewer.frames.get()
        if got.seq is not None:
            log.append((got.arrived, got.seq))


async def faults(url: str, kills: int) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    log: list[tuple[float, int]] = []
    async with aiohttp.ClientSession() as http:
        viewer = await rtc_client.connect(http, url)
        viewer.send({"type": "probe", "on": True})
        tasks = [
            asyncio.ensure_future(_drive(viewer)),
            asyncio.ensure_future(_pictures(viewer, log)),
        ]
        try:
            for k in range(kills):
                workers = await _all_ready(http, url)
                await asyncio.sleep(STEADY_S)
                victim = workers[k % len(workers)]
                killed_at, killed_seq = time.monotonic(), viewer.seq
                os.kill(victim["pid"], signal.SIGKILL)
                resumed_at = await _first_after(log, killed_seq)
                back = await _all_ready(http, url)
                back_at = time.monotonic()
                if back[victim["index"]]["pid"] == victim["pid"]:
                    raise RuntimeError(f"worker {victim['index']} was not replaced")
                await asyncio.sleep(max(0.0, killed_at + 1.0 - time.monotonic()))
                rounds.append(
                    {
                        "worker": victim["index"],
                        "resumed_s": round(resumed_at - killed_at, 3),
                        "back_s": round(back_at - killed_at, 2),
                        "pictures_first_s": sum(killed_at <= a < killed_at + 1.0 for a, _ in log),
                        "pictures_before_s": sum(killed_at - 1.0 <= a < killed_at for a, _ in log),
                    }
                )
                print(rounds[-1], flush=True)
            final_seq = viewer.seq
            await _first_after(log, final_seq)  # the session still streams after the last round
            stats = await api_stats(http, url)
            async with http.get(f"{url}/metrics") as r:
                metrics = await r.text()
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks)
            await viewer.close()
    errors = []
    while not viewer.messages.empty():
        m = viewer.messages.get_nowait()
        if m["type"] == "error":
            errors.append(m["message"])
    resumed = [r["resumed_s"] for r in rounds]
    restarts = sum(w["restarts"] for w in stats["workers"])
    return {
        "kills": kills,
        "rounds": rounds,
        "resumed_s_median": round(statistics.median(resumed), 3),
        "resumed_s_max": max(resumed),
        "back_s_median": round(statistics.median(r["back_s"] for r in rounds), 2),
        "resume_target_s": RESUME_TARGET_S,
        "met": max(resumed) <= RESUME_TARGET_S,
        "session_survived": viewer.session in stats["sessions"],
        "restarts_in_stats": restarts,
        "restarts_in_metrics": _metric_sum(metrics, "avatar_worker_restarts_total"),
        "errors_told": len(errors),
        "error_examples": sorted(set(errors))[:3],
    }


async def _first_after(log: list[tuple[float, int]], seq: int) -> float:
    """When the first picture stamped with a seq above `seq` arrived (waits for it). Called when
    `seq` was the last one sent, so only pictures logged from then on can carry a later one."""
    deadline = time.monotonic() + rtc_client.WAIT_S
    checked = len(log)
    while time.monotonic() < deadline:
        for arrived, got in log[checked:]:
            if got > seq:
                return arrived
        checked = len(log)
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no picture for a control after seq {seq} within {rtc_client.WAIT_S} s")


def _metric_sum(text: str, name: str) -> float:
    """The sum over labels of a Prometheus sample in the exposition `text`."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.faults", __doc__)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    if args.url and urllib.parse.urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a server on this machine: its workers are killed by pid")
    use_loopback_only()
    report = run_against(
        args.url, args.avatar, lambda url, _pid: asyncio.run(faults(url, args.kills))
    )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
