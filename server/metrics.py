"""GET /metrics: the server's state in Prometheus' text format, read at scrape time.

A collector per app (its own registry, no module-level metrics) reads the sessions and the workers
when Prometheus scrapes; nothing is counted on the frame path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class ServerCollector(Collector):
    """Sessions, per-session fps and latency, worker liveness and restarts, why sessions ended,
    and what the process holds (server.resources)."""

    def __init__(
        self,
        sessions: Callable[[], dict[str, dict[str, Any]]],
        workers: Callable[[], list[dict[str, Any]]],
        resources: Callable[[], dict[str, Any]],
        closed: Callable[[], dict[str, int]],
    ) -> None:
        self._sessions = sessions
        self._workers = workers
        self._resources = resources
        self._closed = closed

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sessions = self._sessions()
        yield GaugeMetricFamily("avatar_sessions", "Open WebRTC sessions", value=len(sessions))
        fps = GaugeMetricFamily(
            "avatar_session_fps", "Frames per second rendered for a session", labels=["session"]
        )
        latency = GaugeMetricFamily(
            "avatar_session_latency_ms",
            "Median control-to-picture latency of a session's recent frames (ms)",
            labels=["session"],
        )
        for sid, stats in sessions.items():
            if stats.get("fps") is not None:
                fps.add_metric([sid], stats["fps"])
            if stats.get("latency_ms") is not None:
                latency.add_metric([sid], stats["latency_ms"])
        yield fps
        yield latency
        up = GaugeMetricFamily(
            "avatar_worker_up", "1 if a render worker is alive", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "avatar_worker_restarts", "Times a render worker was restarted", labels=["worker"]
        )
        for w in self._workers():
            up.add_metric([str(w["index"])], 1.0 if w["alive"] else 0.0)
            restarts.add_metric([str(w["index"])], w["restarts"])
        yield up
        yield restarts
        ended = CounterMetricFamily(
            "avatar_sessions_closed",
            "Sessions ended, by reason (client, silent, ttl, refused, shutdown)",
            labels=["reason"],
        )
        for reason, count in sorted(self._closed().items()):
            ended.add_metric([reason], count)
        yield ended
        for name, value in self._resources().items():
            if value is not None:
                yield GaugeMetricFamily(
                    f"avatar_process_{name}", f"Held by the server now: {name}", value=value
                )


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Any]:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
