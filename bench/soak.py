"""Soak: stream for minutes with a moving control trajectory and watch latency and memory drift.

    python -m bench.soak [--url URL] [--minutes M] --json OUT

Without --url it starts a server of its own (`run.py --loopback-only`, the shipped avatar unless
--avatar) and stops it afterwards; then the server's memory (its process and its workers' resident
sets) is measured too. A Python WebRTC viewer (`bench.rtc_client`) sends controls at 30 Hz, with the
probe on, and times every control from sending to the picture that carries its seq arriving here
(encode, network and decode included; no display). Per minute: latency p50/p95, server memory,
frames per second. JSON keys: DESIGN.md, "Measurement contracts".
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from typing import Any

import aiohttp
import numpy as np
import psutil

from bench import rtc_client
from bench.local_server import run_against, server_parser, write_report
from server.resources import rss_mb

CONTROL_HZ = 30.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (the render workers), MB to 0.1."""
    try:
        root = psutil.Process(pid)
        return rss_mb([pid, *(child.pid for child in root.children(recursive=True))])
    except psutil.Error:
        return 0.0


async def soak(url: str, seconds: float, bucket_s: float, server_pid: int | None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        viewer = await rtc_client.connect(http, url)
        viewer.send({"type": "probe", "on": True})
        errors: list[str] = []
        buckets: list[dict[str, Any]] = []
        latencies: list[float] = []
        seen: set[int] = set()
        start = time.monotonic()
        bucket_start, frames_in_bucket = start, 0
        next_control = start
        rows = max(1, round(seconds / bucket_s))  # every bucket whole, the last one included
        while len(buckets) < rows:
            now = time.monotonic()
            if now >= next_control:
                t = now - start
                viewer.control(
                    pose={"yaw": 25 * math.sin(t * 1.3), "pitch": 8 * math.sin(t * 0.7)},
                    expression={"jawOpen": 0.5 + 0.5 * math.sin(t * 5)},
                )
                next_control += 1 / CONTROL_HZ
            while not viewer.messages.empty():
                m = viewer.messages.get_nowait()
                if m["type"] == "error":
                    errors.append(m["message"])
            try:
                got = await asyncio.wait_for(viewer.frames.get(), max(0.001, next_control - now))
            except TimeoutError:
                got = None
            if got is not None and got.seq is not None and got.seq not in seen:
                seen.add(got.seq)
                if got.seq in viewer.sent:
                    latencies.append((got.arrived - viewer.sent.pop(got.seq)) * 1000.0)
                frames_in_bucket += 1
            if time.monotonic() - bucket_start >= bucket_s:
                span = time.monotonic() - bucket_start
                buckets.append(
                    {
                        "minute": len(buckets) + 1,
                        "mtp_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
                        "mtp_ms_p95": round(float(np.percentile(latencies, 95)), 2)
                        if latencies
                        else None,
                        "rss_mb": tree_rss_mb(server_pid) if server_pid else None,
                        "fps": round(frames_in_bucket / span, 2),
                    }
                )
                latencies, frames_in_bucket, bucket_start = [], 0, time.monotonic()
            for old in [s for s in viewer.sent if s < viewer.seq - 300]:
                del viewer.sent[old]  # controls replaced before rendering (live mode drops them)
        async with http.get(f"{url}/api/stats") as r:
            stats = await r.json()
        await viewer.close()
    first, last = buckets[0], buckets[-1]
    p95s = [b["mtp_ms_p95"] for b in buckets if b["mtp_ms_p95"] is not None]
    # Minute-to-minute p95 is noisy (+-15% here); a fitted slope says more than first vs last.
    trend = (
        float(np.polyfit(np.arange(len(p95s)), p95s, 1)[0]) / float(np.mean(p95s))
        if len(p95s) >= 3
        else None
    )
    drift = (
        (last["mtp_ms_p95"] - first["mtp_ms_p95"]) / first["mtp_ms_p95"]
        if first["mtp_ms_p95"] and last["mtp_ms_p95"]
        else None
    )
    growth = (
        (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
        if first["rss_mb"] and last["rss_mb"]
        else None
    )
    return {
        "per_minute": buckets,
        "p95_drift": round(drift, 4) if drift is not None else None,
        "p95_trend_per_minute": round(trend, 4) if trend is not None else None,
        "rss_growth": round(growth, 4) if growth is not None else None,
        "restarts": sum(w["restarts"] for w in stats["workers"]),
        "errors": len(errors),
        "error_messages": sorted(set(errors))[:10],
        "bucket_seconds": bucket_s,
        "url": url,
    }


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.soak", __doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--bucket-seconds", type=float, default=60.0, help="one row per this long")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.bucket_seconds <= 0 or args.bucket_seconds > args.minutes * 60:
        parser.error("--minutes must be positive and hold at least one --bucket-seconds")
    seconds = args.minutes * 60.0
    report = run_against(
        args.url,
        args.avatar,
        lambda url, pid: asyncio.run(soak(url, seconds, args.bucket_seconds, pid)),
    )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
