"""What the HTTP app serves from: one node on this machine, or a cluster's nodes behind a front.

The app (`server.app`) parses, admits and answers; a `Host` does the work. `LocalHost` is one
`server.node.Node` in this process (`python run.py`); `server.cluster.front.ClusterHost` places
each offer on a Ray render node and gathers the nodes' figures (`python run.py --cluster ADDR`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import Metric

from server.config import ServerConfig
from server.ends import SessionEnds
from server.metrics import server_metrics
from server.node import Node


class Host(Protocol):
    ends: SessionEnds

    async def start(self) -> None: ...

    async def close_sessions(self) -> None:
        """What the app's shutdown ends first (a front ends none: the media never went through
        it, so its nodes keep them)."""

    async def close(self) -> None: ...

    async def offer(self, sdp: str, floor: bool) -> dict[str, Any]:
        """{"sdp", "type", "session"}; server.node.NodeFull / BadOffer."""

    async def still_png(self, state: str) -> bytes:
        """protocol.ProtocolError for a bad state; server.stills.StillsBusy when full;
        server.node.NodeFull when no render node could (a front)."""

    async def avatar_info(self) -> dict[str, Any]: ...

    async def health(self) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...

    def metrics(self) -> Iterator[Metric]:
        """The Prometheus families at scrape time (from what the host last knew: no waiting)."""


class LocalHost:
    """One node in this process."""

    def __init__(self, config: ServerConfig) -> None:
        self.node = Node(config)
        self.ends = self.node.ends

    async def start(self) -> None:
        await self.node.start()

    async def close_sessions(self) -> None:
        await self.node.close_sessions()

    async def close(self) -> None:
        await self.node.close()

    async def offer(self, sdp: str, floor: bool) -> dict[str, Any]:
        return await self.node.offer(sdp, floor)

    async def still_png(self, state: str) -> bytes:
        return await self.node.still_png(state)

    async def avatar_info(self) -> dict[str, Any]:
        return self.node.avatar_info()

    async def health(self) -> dict[str, Any]:
        return self.node.health()

    async def stats(self) -> dict[str, Any]:
        return self.node.stats()

    def metrics(self) -> Iterator[Metric]:
        node = self.node
        if not node.ready:
            return iter(())
        return server_metrics(node.session_stats(), node.workers(), node.resources(), node.closed)
