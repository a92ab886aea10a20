"""A flood of stills beside a live session: N concurrent `GET /still.png` clients, each asking
again as soon as it is answered (after the Retry-After a 429 names). What a server must bear when
its still route is public: `bench.browser --stills N` runs it while the page's latency test runs,
and reports it beside the same test without it."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
from typing import Any

import aiohttp
import psutil

from server.resources import rss_mb

MEMORY_EVERY_S = 5.0


class StillsFlood:
    """`concurrent` clients on a thread of their own (the page's test runs meanwhile), and the
    server's memory read every MEMORY_EVERY_S meanwhile (growth would show as a rising series)."""

    def __init__(self, url: str, concurrent: int, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.concurrent = concurrent
        self.headers = headers or {}
        self.statuses: collections.Counter[int] = collections.Counter()
        self.memory_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> StillsFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _client(self, http: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            state = json.dumps({"pose": {"yaw": rng.uniform(-10, 10)}})
            try:
                async with http.get(
                    f"{self.url}/still.png", params={"state": state}, headers=self.headers
                ) as r:
                    await r.read()
                    self.statuses[r.status] += 1
                    wait = float(r.headers.get("Retry-After", 0)) if r.status == 429 else 0.0
            except aiohttp.ClientError:
                self.statuses[0] += 1
                wait = 1.0
            if wait:
                await asyncio.sleep(wait)

    async def _memory(self) -> None:
        async with aiohttp.ClientSession() as http:
            while not self._stop.is_set():
                await asyncio.sleep(MEMORY_EVERY_S)
                async with http.get(f"{self.url}/api/stats", headers=self.headers) as r:
                    self.memory_mb.append(server_memory_mb(await r.json()))

    async def _run(self) -> None:
        limits = aiohttp.TCPConnector(limit=self.concurrent)
        async with aiohttp.ClientSession(connector=limits) as http:
            clients = [self._client(http, i) for i in range(self.concurrent)]
            await asyncio.gather(self._memory(), *clients)

    def report(self) -> dict[str, Any]:
        return {
            "concurrent": self.concurrent,
            "answers": {str(k): v for k, v in sorted(self.statuses.items())},
            f"server_mb_every_{MEMORY_EVERY_S:g}_s": self.memory_mb,
        }


def server_memory_mb(stats: dict[str, Any]) -> float:
    """The server's, its render workers' and its still renderer's resident memory (MB), from
    GET /api/stats' pids (the still renderer's from `stills`)."""
    held = stats["resources"]
    stills = stats.get("stills", {}).get("pid")
    extra = rss_mb([stills]) if stills and psutil.pid_exists(stills) else 0.0
    return round(held["rss_mb"] + held["workers_rss_mb"] + extra, 1)
