"""One machine's sessions: what a render node owns, with or without a cluster around it.

A `Node` holds the avatar, the worker pipeline on this machine's devices (through `server.bridge`),
the still renderer (`server.stills`), and the sessions' peer connections: it answers offers, ends
sessions (time limit, silent peers, shutdown) and tells its load. It knows no HTTP: the app
(`server.app`) serves one node on its own machine, and on a cluster each node is a Ray actor
(`server.cluster.node_actor`) that the front (`server.cluster.front`) sends offers to. The media
never leaves the node: its peer connections gather this machine's own ICE candidates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import statistics
import time
import uuid
import weakref
from typing import Any, TypeVar

import torch
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from engine.controls import POSE_LIMITS_DEG, VIEW_LIMITS_DEG
from engine.render.avatar import Avatar
from engine.render.backends.select import Selection, summary_line
from engine.runtime import release_free_memory
from server import protocol
from server.bridge import Bridge
from server.codecs import max_bitrate
from server.config import ServerConfig
from server.ends import SessionEnds
from server.resources import snapshot
from server.session import Session
from server.stills import StillRenderer

RETRY_AFTER_S = 10  # what a client told "too many sessions" should wait
TTL_CHECK_S = 1.0
ENDED_TOLD = 64  # the latest ended sessions' reasons in each load (read every heartbeat)
# What the page is told when a session ends for a reason the node itself did not announce.
REASONS = {
    "client": "the connection closed",
    "silent": "the page went silent",
    "refused": "the offer was refused",
    "shutdown": "the server is shutting down",
}
LOG = logging.getLogger(__name__)
T = TypeVar("T")


class NodeFull(Exception):
    """Every session slot is taken; try again after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BadOffer(ValueError):
    """The offer could not be answered (the reason is the message)."""


def _inert(avatar: Avatar) -> list[str]:
    flags = zip(avatar.expression_names, avatar.head.data.expression_inert, strict=True)
    return [name for name, inert in flags if inert]


def _started(value: T | None) -> T:
    """What start() made (RuntimeError before it has run)."""
    if value is None:
        raise RuntimeError("the node has not started")
    return value


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Node:
    """A machine's avatar, workers, stills and sessions (use from one event loop)."""

    def __init__(self, config: ServerConfig, name: str = "local") -> None:
        self.config = config
        self.name = name
        self.sessions: dict[str, Session] = {}
        # Every peer connection made, weakly: a leak check counts those not closed, wherever
        # they hide.
        self.peers: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        # Why sessions ended: client (closed or failed connection), silent (vanished peer), ttl,
        # refused (a bad offer), shutdown.
        self.closed: collections.Counter[str] = collections.Counter()
        self.ends = SessionEnds()
        self.started = time.monotonic()
        self._avatar: Avatar | None = None
        self._selection: Selection | None = None
        self._bridge: Bridge | None = None
        self._stills: StillRenderer | None = None
        self._reaper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the avatar, choose the backends (cached after the first start on a machine),
        spawn the workers and the still renderer; seconds to a minute."""
        config = self.config
        loop = asyncio.get_running_loop()
        avatar = await loop.run_in_executor(None, Avatar.load, config.avatar_path)
        self._avatar = avatar
        selection = await loop.run_in_executor(None, config.choose_backend)
        self._selection = selection
        LOG.info(summary_line(selection))
        self._bridge = await Bridge.start(config.pipeline_settings(selection.choice))
        self._stills = await StillRenderer.start(
            config.avatar_path, config.stills_queue, live=lambda: bool(self.sessions)
        )
        LOG.info(
            "node %s: avatar %s, %d^2, %s, %d torch threads here",
            self.name,
            config.avatar_path,
            avatar.resolution,
            config.schedule.label,
            torch.get_num_threads(),
        )
        self._reaper = asyncio.ensure_future(self._reap_sessions())

    async def close_sessions(self) -> None:
        farewell = "the server is shutting down"
        await asyncio.gather(
            *(self.end_session(sid, "shutdown", farewell) for sid in list(self.sessions))
        )

    async def close(self) -> None:
        """End every session, then stop the reaper, the still renderer and the workers."""
        await self.close_sessions()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._stills is not None:
            await self._stills.close()
        if self._bridge is not None:
            await self._bridge.close()

    @property
    def avatar(self) -> Avatar:
        return _started(self._avatar)

    @property
    def selection(self) -> Selection:
        return _started(self._selection)

    @property
    def bridge(self) -> Bridge:
        return _started(self._bridge)

    @property
    def ready(self) -> bool:
        return self._reaper is not None

    # ------------------------------------------------------------------ sessions

    async def offer(self, sdp: str, floor: bool = False) -> dict[str, str]:
        """Answer an SDP offer with a new session: {"sdp", "type", "session"}. NodeFull when
        every slot is taken, BadOffer when the offer cannot be answered."""
        if len(self.sessions) >= self.config.max_sessions:
            raise NodeFull(
                f"the server is full ({self.config.max_sessions} sessions); try again shortly"
            )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.config.ice_servers)))
        self.peers.add(pc)
        sid = uuid.uuid4().hex[:12]
        avatar = self.avatar
        session = Session(sid, pc, self.bridge, avatar.expression_names, avatar.rest, floor)
        self.sessions[sid] = session
        self.ends.opened(sid)

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            session.attach(channel)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end_session(sid, "client")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise ValueError("the offer has no video transceiver to receive the avatar on")
            session.sender = pc.addTrack(session.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises several kinds for a malformed SDP
            await self.end_session(sid, "refused")
            raise BadOffer(f"bad offer: {type(exc).__name__}: {exc}") from exc
        LOG.info("node %s: session %s started (%d open)", self.name, sid, len(self.sessions))
        answer = pc.localDescription
        return {"sdp": answer.sdp, "type": answer.type, "session": sid}

    async def end_session(self, sid: str, reason: str, farewell: str | None = None) -> None:
        """Close a session once (the first caller's reason is the one counted); `farewell` tells
        the page why, when the server is the one ending it."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        self.closed[reason] += 1
        self.ends.ended(sid, farewell or REASONS.get(reason, reason))
        await session.close(farewell)
        if not self.sessions:
            release_free_memory()  # the last session's encoder and buffers: back to the OS

    async def _reap_sessions(self) -> None:
        """Once a second: end sessions past their time limit and those whose peer went silent."""
        ttl = self.config.session_ttl_s
        while True:
            await asyncio.sleep(TTL_CHECK_S)
            for sid, session in list(self.sessions.items()):
                try:
                    if time.monotonic() - session.created > ttl:
                        LOG.info("session %s reached its time limit (%.0f s)", sid, ttl)
                        farewell = f"it reached its time limit ({ttl:g} s)"
                        await self.end_session(sid, "ttl", farewell)
                    elif await session.peer_silent():
                        LOG.info("session %s: the peer went silent; closing it", sid)
                        await self.end_session(sid, "silent")
                except Exception:  # one session's trouble must not stop the reaping of the others
                    LOG.exception("session %s: reaping failed", sid)

    # ------------------------------------------------------------------ stills

    async def still_png(self, state: str) -> bytes:
        """One generator frame of the JSON control `state` as PNG, rendered by the niced still
        process. protocol.ProtocolError for a bad state; server.stills.StillsBusy when full."""
        avatar = self.avatar
        controls = protocol.parse_state(state, avatar.expression_names, avatar.rest)
        return await _started(self._stills).render_png(controls)

    # ------------------------------------------------------------------ what it tells

    def avatar_info(self) -> dict[str, Any]:
        """GET /api/avatar's body: what a page needs to build its controls."""
        avatar = self.avatar
        return {
            "resolution": avatar.resolution,
            "expression_names": list(avatar.expression_names),
            "inert": _inert(avatar),
            "expression_range": [0.0, 1.0],
            # Weights the avatar draws no further ({name: weight}; a score past it is drawn
            # there): past its clip's widest mouth the pictures come apart.
            "expression_limits": avatar.expression_limits,
            # Where a session starts (names left out at 0): the avatar's training median.
            "rest_expression": avatar.rest_expression,
            # What to offer: the poses and orbits this avatar renders (held at the edge past
            # them); the protocol itself accepts `accepted_pose_deg` and `accepted_view_deg`.
            "pose_limits_deg": avatar.pose_range_deg
            or {k: list(v) for k, v in POSE_LIMITS_DEG.items()},
            "accepted_pose_deg": {k: list(v) for k, v in POSE_LIMITS_DEG.items()},
            "view_limits_deg": avatar.view_range_deg
            or {k: list(v) for k, v in VIEW_LIMITS_DEG.items()},
            "accepted_view_deg": {k: list(v) for k, v in VIEW_LIMITS_DEG.items()},
            "codec": self.config.codec,
            "max_bitrate": max_bitrate(),
            # The clip the face was learned from and its terms (null: the file does not say).
            "source": avatar.source,
            # How the workers run its networks here, and the stage times that chose it.
            "backend": self._backend_brief(),
        }

    def _backend_brief(self) -> dict[str, Any]:
        selection = self.selection
        whole = selection.choice.to_dict()
        return {
            "runtime": whole["runtime"],
            "precision": whole["precision"],
            "label": selection.choice.label,
            "texture_ms": selection.stage_ms("texture"),
            "generator_ms": selection.stage_ms("generator"),
            "warp_ms": selection.stage_ms("warp"),
            "source": selection.source,
        }

    def workers(self) -> list[dict[str, Any]]:
        return self.bridge.workers() if self._bridge is not None else []

    def health(self) -> dict[str, Any]:
        avatar = self.avatar
        workers = self.workers()
        return {
            "status": "ok" if all(w["alive"] for w in workers) else "degraded",
            "avatar": {
                "path": str(self.config.avatar_path),
                "resolution": avatar.resolution,
                "expression_names": list(avatar.expression_names),
                "inert": _inert(avatar),
            },
            "webrtc": True,
            "sessions": len(self.sessions),
            "workers": workers,
        }

    def resources(self, workers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """What the node holds now (server.resources): peers, tasks, threads, fds, memory.
        `workers`: the worker states when the caller already asked the pipeline for them."""
        if self._bridge is None:
            return {}
        open_peers = sum(pc.connectionState != "closed" for pc in self.peers)
        return snapshot(
            open_peers,
            self._bridge.pipeline.open_sessions,
            self.workers() if workers is None else workers,
        )

    def session_stats(self) -> dict[str, dict[str, Any]]:
        return {sid: s.stats() for sid, s in self.sessions.items()}

    def stats(self) -> dict[str, Any]:
        """GET /api/stats' body for this node."""
        config = self.config
        workers = self.workers()
        return {
            "sessions": self.session_stats(),
            "closed": dict(self.closed),
            "resources": self.resources(workers),
            "workers": workers,
            "schedule": {
                "name": config.schedule.name,
                "workers": config.schedule.workers,
                "num_warps": config.schedule.num_warps,
            },
            "backend": self.selection.to_dict(),
            "stills": self._stills.stats() if self._stills is not None else {},
        }

    def load(self) -> dict[str, Any]:
        """What placement needs, cheaply: slots, the frames' pace and latency, restarts, and
        which sessions are open and why the recent ones ended."""
        latencies = [f.latency_ms for s in self.sessions.values() for f in s.recent]
        fps = [st["fps"] for st in self.session_stats().values() if st.get("fps") is not None]
        workers = self.workers()
        return {
            "name": self.name,
            "ready": self.ready,
            "pid": os.getpid(),
            "worker_pids": [w["pid"] for w in workers if w.get("pid")],
            "capacity": self.config.max_sessions,
            "sessions": len(self.sessions),
            "free": max(0, self.config.max_sessions - len(self.sessions)),
            "session_ids": list(self.sessions),
            "ended": self.ends.recent(ENDED_TOLD),
            "fps": round(statistics.median(fps), 2) if fps else None,
            "latency_p50_ms": _percentile(latencies, 0.5),
            "latency_p95_ms": _percentile(latencies, 0.95),
            "worker_restarts": sum(w.get("restarts", 0) for w in workers),
            "workers_alive": sum(bool(w.get("alive")) for w in workers),
            "uptime_s": round(time.monotonic() - self.started, 1),
        }
