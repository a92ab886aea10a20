"""A render node as a Ray actor: one machine's `server.node.Node`, reached by the front.

The actor is async: Ray runs its methods on one event loop that lives as long as the actor, which
is what aiortc needs (its peer connections keep sending from that loop between calls). It starts
its node on the first call (an actor restarted by Ray starts again the same way), and answers
with plain dicts: the front maps them to HTTP, and no exception has to survive pickling.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server import protocol
from server.codecs import set_max_bitrate, time_encoders
from server.config import ServerConfig
from server.ice import use_loopback_only
from server.node import BadOffer, Node, NodeFull
from server.stills import StillsBusy

LOG = logging.getLogger(__name__)


class RenderNode:
    """Wrapped by `ray.remote` in server.cluster.front (options: name, node, restarts)."""

    def __init__(self, config: ServerConfig, name: str, max_bitrate: int) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        if config.loopback_only:
            use_loopback_only()
        set_max_bitrate(max_bitrate)
        time_encoders()
        self._node = Node(config, name)
        self._starting: asyncio.Task[None] | None = None

    def _start(self) -> asyncio.Task[None]:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._node.start())
        return self._starting

    async def ready(self) -> bool:
        """Wait until the node has started (raises what stopped it)."""
        await self._start()
        return True

    async def watch(self, seconds: float) -> None:
        """Answers after `seconds`: the front keeps one such call open, and Ray fails it the
        moment this process dies (sooner than the next heartbeat would notice). Bounded, so that
        the calls of a front that went away do not pile up here."""
        await asyncio.sleep(seconds)

    async def load(self) -> dict[str, Any]:
        """server.node.Node.load, or {"ready": False} while starting ("error": why it failed)."""
        starting = self._start()
        if not starting.done():
            return {"name": self._node.name, "ready": False}
        if starting.exception() is not None:
            return {"name": self._node.name, "ready": False, "error": repr(starting.exception())}
        return self._node.load()

    async def offer(self, sdp: str, floor: bool) -> dict[str, Any]:
        """{"answer": {...}}, or {"full": message, "retry_after_s"}, or {"bad": message}."""
        await self._start()
        try:
            return {"answer": await self._node.offer(sdp, floor)}
        except NodeFull as exc:
            return {"full": str(exc), "retry_after_s": exc.retry_after_s}
        except BadOffer as exc:
            return {"bad": str(exc)}

    async def still_png(self, state: str) -> dict[str, Any]:
        """{"png": bytes}, or {"busy": message, "retry_after_s"}, or {"bad": message}."""
        await self._start()
        try:
            return {"png": await self._node.still_png(state)}
        except protocol.ProtocolError as exc:
            return {"bad": str(exc)}
        except StillsBusy as exc:
            return {"busy": str(exc), "retry_after_s": exc.retry_after_s}

    async def avatar_info(self) -> dict[str, Any]:
        await self._start()
        return self._node.avatar_info()

    async def stats(self) -> dict[str, Any]:
        await self._start()
        return {**self._node.stats(), "load": self._node.load()}

    async def health(self) -> dict[str, Any]:
        await self._start()
        return self._node.health()

    async def shutdown(self) -> None:
        """End the sessions (told why) and stop the workers; the actor may then be killed."""
        if self._starting is not None and self._starting.done():
            await self._node.close()
