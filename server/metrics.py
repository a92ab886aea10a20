"""GET /metrics: the server's state in Prometheus' text format, read at scrape time.

A collector per app (its own registry, no module-level metrics) asks the app's host for its
families when Prometheus scrapes; nothing is counted on the frame path. One node's families come
from `server_metrics`; a cluster front adds a `node` label and the nodes' own gauges
(`server.cluster.front`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


def server_metrics(
    sessions: Mapping[str, Mapping[str, Any]],
    workers: list[dict[str, Any]],
    resources: Mapping[str, Any],
    closed: Mapping[str, int],
    node: str | None = None,
) -> Iterator[Metric]:
    """Sessions, per-session fps and latency, worker liveness and restarts, why sessions ended,
    and what the process holds (server.resources). `node`: a label on every family (a cluster's
    node name), or None on one machine."""
    extra = [] if node is None else ["node"]
    tag = [] if node is None else [node]
    count = GaugeMetricFamily("avatar_sessions", "Open WebRTC sessions", labels=extra)
    count.add_metric(tag, len(sessions))
    yield count
    fps = GaugeMetricFamily(
        "avatar_session_fps", "Frames per second rendered for a session", labels=["session", *extra]
    )
    latency = GaugeMetricFamily(
        "avatar_session_latency_ms",
        "Median control-to-picture latency of a session's recent frames (ms)",
        labels=["session", *extra],
    )
    for sid, stats in sessions.items():
        if stats.get("fps") is not None:
            fps.add_metric([sid, *tag], stats["fps"])
        if stats.get("latency_ms") is not None:
            latency.add_metric([sid, *tag], stats["latency_ms"])
    yield fps
    yield latency
    up = GaugeMetricFamily(
        "avatar_worker_up", "1 if a render worker is alive", labels=["worker", *extra]
    )
    restarts = CounterMetricFamily(
        "avatar_worker_restarts", "Times a render worker was restarted", labels=["worker", *extra]
    )
    for w in workers:
        up.add_metric([str(w["index"]), *tag], 1.0 if w["alive"] else 0.0)
        restarts.add_metric([str(w["index"]), *tag], w["restarts"])
    yield up
    yield restarts
    ended = CounterMetricFamily(
        "avatar_sessions_closed",
        "Sessions ended, by reason (client, silent, ttl, refused, shutdown)",
        labels=["reason", *extra],
    )
    for reason, n in sorted(closed.items()):
        ended.add_metric([reason, *tag], n)
    yield ended
    for name, value in resources.items():
        if value is not None:
            family = GaugeMetricFamily(
                f"avatar_process_{name}", f"Held by the server now: {name}", labels=extra
            )
            family.add_metric(tag, value)
            yield family


class HostCollector(Collector):
    """Whatever `families()` gives at scrape time (empty before the host has started)."""

    def __init__(self, families: Callable[[], Iterator[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families()


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Any]:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
