"""The aiohttp application: WebRTC signaling and sessions over the engine's worker pipeline.

Routes: `GET /` the page (`web/`), `GET /call` the call demo, `GET /stills` stills only; `POST /offer` (SDP offer in, answer out: aiortc gathers its candidates
before answering, so no trickle); `GET /api/avatar`; `GET /api/stats`; `GET /health`; and
`GET /metrics` (Prometheus); `GET /still.png?state=JSON`, one generator frame as PNG (the page's preview until the browser
client streams). The worker pool starts in `cleanup_ctx` and stops after every peer connection is
closed in `on_shutdown`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import io
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from PIL import Image
from prometheus_client import CollectorRegistry

from engine.controls import POSE_LIMITS_DEG, VIEW_LIMITS_DEG
from engine.head.canonical_mesh import TASK_BUNDLE
from engine.pipeline.dispatcher import PipelineSettings
from engine.pipeline.schedule import DEFAULT_SCHEDULE, Schedule
from engine.render.avatar import DEFAULT_AVATAR, Avatar
from engine.render.backends.select import Selection, choose, summary_line
from engine.render.backends.stages import FP32, BackendChoice
from engine.runtime import release_free_memory
from server import protocol
from server.bridge import Bridge
from server.codecs import max_bitrate, time_encoders
from server.ice import use_loopback_only
from server.metrics import ServerCollector, metrics_handler
from server.resources import snapshot
from server.session import Session

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_OFFER_BYTES = 64 * 1024  # an SDP offer is a few KB
RETRY_AFTER_S = 10  # what a client told "too many sessions" should wait
TTL_CHECK_S = 1.0
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """host, port; avatar_path; schedule: how the workers render (see engine.pipeline.schedule); device:
    None = cuda where there are GPUs, else cpu; ice_servers: STUN/TURN (none: local use);
    max_sessions; session_ttl_s: the longest a session may live; loopback_only: gather ICE
    candidates on 127.0.0.1 only (tests and benchmarks on one machine)."""

    host: str = "127.0.0.1"
    port: int = 8080
    avatar_path: Path = DEFAULT_AVATAR
    schedule: Schedule = DEFAULT_SCHEDULE
    device: str | None = None
    ice_servers: tuple[RTCIceServer, ...] = ()
    max_sessions: int = 4
    session_ttl_s: float = 3600.0
    loopback_only: bool = False
    codec: str = "vp8"  # the page's setCodecPreferences choice (aiortc's answerer cannot choose)
    token: str | None = None  # when set, POST /offer needs "Authorization: Bearer <token>"
    allowed_origins: tuple[str, ...] = ()  # cross-origin pages allowed to POST (same origin always)
    # How the workers run the networks (engine.render.backends.select): "auto" measures at start-up
    # (cached per avatar and machine); fp32 torch, the tests' default, measures nothing.
    precision: str = "fp32"
    runtime: str = "torch"
    backend_cache: Path | None = None

    def pipeline_settings(self, backend: BackendChoice = FP32) -> PipelineSettings:
        devices = None if self.device is None else (self.device,) * self.schedule.workers
        return PipelineSettings(
            self.avatar_path, self.schedule, mode="live", devices=devices, backend=backend
        )

    def choose_backend(self) -> Selection:
        """The workers' backends (blocking: measures the candidates unless the cache knows)."""
        settings = self.pipeline_settings()
        return choose(
            self.avatar_path,
            self.precision,
            self.runtime,
            settings.worker_devices()[0],
            settings.worker_threads(),
            self.backend_cache,
            self.schedule.num_warps,
        )


@dataclass
class Renderer:
    """The avatar for stills and the lock that keeps one still render at a time."""

    avatar: Avatar
    lock: asyncio.Lock


CONFIG_KEY = web.AppKey("config", ServerConfig)
SELECTION_KEY = web.AppKey("selection", Selection)
RENDERER_KEY = web.AppKey("renderer", Renderer)
BRIDGE_KEY = web.AppKey("bridge", Bridge)
SESSIONS_KEY = web.AppKey("sessions", dict[str, Session])
# Every peer connection made, weakly: a leak check counts those not closed, wherever they hide.
PEERS_KEY = web.AppKey("peers", weakref.WeakSet[RTCPeerConnection])
# Why sessions ended: client (closed or failed connection), silent (vanished peer), ttl,
# refused (a bad offer), shutdown.
CLOSED_KEY = web.AppKey("closed", collections.Counter[str])


# ---------------------------------------------------------------------------------- stills


def encode_png(picture: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return out.getvalue()


async def still(request: web.Request) -> web.Response:
    renderer = request.app[RENDERER_KEY]
    try:
        state = request.query.get("state", "{}")
        avatar = renderer.avatar
        controls = protocol.parse_state(state, avatar.expression_names, avatar.rest)
    except protocol.ProtocolError as exc:
        raise web.HTTPBadRequest(text=f"bad state: {exc}") from exc
    loop = asyncio.get_running_loop()
    async with renderer.lock:  # renders run in a thread: the event loop keeps serving
        picture = await loop.run_in_executor(None, renderer.avatar.render, controls)
    body = await loop.run_in_executor(None, encode_png, picture)
    return web.Response(body=body, content_type="image/png", headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------------------------- pages, api


def _page(name: str) -> Any:
    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / name, headers={"Cache-Control": "no-cache"})

    return page


async def face_model(request: web.Request) -> web.FileResponse:
    """The Face Landmarker bundle the page tracks a camera with (the same file capture uses)."""
    return web.FileResponse(TASK_BUNDLE, headers={"Cache-Control": "max-age=86400"})


def _inert(avatar: Avatar) -> list[str]:
    flags = zip(avatar.expression_names, avatar.head.data.expression_inert, strict=True)
    return [name for name, inert in flags if inert]


async def health(request: web.Request) -> web.Response:
    avatar = request.app[RENDERER_KEY].avatar
    bridge = request.app[BRIDGE_KEY]
    workers = bridge.workers()
    return web.json_response(
        {
            "status": "ok" if all(w["alive"] for w in workers) else "degraded",
            "avatar": {
                "path": str(request.app[CONFIG_KEY].avatar_path),
                "resolution": avatar.resolution,
                "expression_names": list(avatar.expression_names),
                "inert": _inert(avatar),
            },
            "webrtc": True,
            "sessions": len(request.app[SESSIONS_KEY]),
            "workers": workers,
        }
    )


async def api_avatar(request: web.Request) -> web.Response:
    avatar = request.app[RENDERER_KEY].avatar
    return web.json_response(
        {
            "resolution": avatar.resolution,
            "expression_names": list(avatar.expression_names),
            "inert": _inert(avatar),
            "expression_range": [0.0, 1.0],
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
            "codec": request.app[CONFIG_KEY].codec,
            "max_bitrate": max_bitrate(),
            # The clip the face was learned from and its terms (null: the file does not say).
            "source": avatar.source,
            # How the workers run its networks here, and the stage times that chose it.
            "backend": _backend_brief(request.app[SELECTION_KEY]),
        }
    )


def _backend_brief(selection: Selection) -> dict[str, Any]:
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


def resources(app: web.Application, workers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What the server holds now (server.resources): peers, tasks, threads, fds, memory.
    `workers`: the worker states when the caller already asked the pipeline for them."""
    bridge = app[BRIDGE_KEY]
    open_peers = sum(pc.connectionState != "closed" for pc in app[PEERS_KEY])
    return snapshot(
        open_peers, bridge.pipeline.open_sessions, bridge.workers() if workers is None else workers
    )


def closed_counts(app: web.Application) -> dict[str, int]:
    counts: collections.Counter[str] = app[CLOSED_KEY]
    return dict(counts)


async def api_stats(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS_KEY]
    config = request.app[CONFIG_KEY]
    workers = request.app[BRIDGE_KEY].workers()
    return web.json_response(
        {
            "sessions": {sid: s.stats() for sid, s in sessions.items()},
            "closed": closed_counts(request.app),
            "resources": resources(request.app, workers),
            "workers": workers,
            "schedule": {
                "name": config.schedule.name,
                "workers": config.schedule.workers,
                "num_warps": config.schedule.num_warps,
            },
            "backend": request.app[SELECTION_KEY].to_dict(),
        }
    )


# ---------------------------------------------------------------------------------- signaling


async def _read_offer(request: web.Request) -> tuple[RTCSessionDescription, bool]:
    """The offer, and whether it asks for the synthetic floor (`"source": "floor"`)."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text=f"the offer must be sent as application/json, not {request.content_type}"
        )
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_OFFER_BYTES, actual_size=request.content_length
        )
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"the offer is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='the offer must be a JSON object {"sdp", "type"}')
    if body.get("type") != "offer":
        raise web.HTTPBadRequest(text=f'"type" must be "offer", got {body.get("type")!r}')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise web.HTTPBadRequest(text='"sdp" must be an SDP session description (starting "v=0")')
    source = body.get("source", "avatar")
    if source not in ("avatar", "floor"):
        raise web.HTTPBadRequest(text=f'"source" must be "avatar" or "floor", got {source!r}')
    return RTCSessionDescription(sdp=sdp, type="offer"), source == "floor"


def _check_token(request: web.Request, token: str | None) -> None:
    if token is None:
        return
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # Constant-time: the comparison must not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        raise web.HTTPUnauthorized(
            text="POST /offer needs 'Authorization: Bearer <token>' (the server's --token)",
            headers={"WWW-Authenticate": "Bearer"},
        )


@web.middleware
async def origin_check(request: web.Request, handler: Any) -> web.StreamResponse:
    """Browsers send Origin with cross-site POSTs: only the server's own origin and the configured
    ones may start sessions (a page elsewhere must not spend this server's GPUs)."""
    origin = request.headers.get("Origin")
    if request.method == "POST" and origin is not None:
        own = f"{request.scheme}://{request.host}"
        if origin != own and origin not in request.app[CONFIG_KEY].allowed_origins:
            raise web.HTTPForbidden(text=f"origin {origin} is not allowed to use this server")
    return await handler(request)


async def offer(request: web.Request) -> web.Response:
    app = request.app
    config, sessions = app[CONFIG_KEY], app[SESSIONS_KEY]
    _check_token(request, config.token)
    description, floor = await _read_offer(request)
    if len(sessions) >= config.max_sessions:
        raise web.HTTPServiceUnavailable(
            text=f"the server is full ({config.max_sessions} sessions); try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(config.ice_servers)))
    app[PEERS_KEY].add(pc)
    sid = uuid.uuid4().hex[:12]
    avatar = app[RENDERER_KEY].avatar
    session = Session(sid, pc, app[BRIDGE_KEY], avatar.expression_names, avatar.rest, floor)
    sessions[sid] = session

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        session.attach(channel)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await end_session(app, sid, "client")

    try:
        await pc.setRemoteDescription(description)
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            raise ValueError("the offer has no video transceiver to receive the avatar on")
        session.sender = pc.addTrack(session.track)
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # aiortc raises several kinds for a malformed SDP
        await end_session(app, sid, "refused")
        raise web.HTTPBadRequest(text=f"bad offer: {type(exc).__name__}: {exc}") from exc
    LOG.info("session %s started (%d open)", sid, len(sessions))
    answer = pc.localDescription
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": sid})


async def end_session(
    app: web.Application, sid: str, reason: str, farewell: str | None = None
) -> None:
    """Close a session once (the first caller's reason is the one counted); `farewell` tells the
    page why, when the server is the one ending it."""
    session = app[SESSIONS_KEY].pop(sid, None)
    if session is None:
        return
    app[CLOSED_KEY][reason] += 1
    await session.close(farewell)
    if not app[SESSIONS_KEY]:
        release_free_memory()  # the last session's encoder and buffers: back to the OS


async def _reap_sessions(app: web.Application) -> None:
    """Once a second: end sessions past their time limit and those whose peer went silent."""
    ttl = app[CONFIG_KEY].session_ttl_s
    while True:
        await asyncio.sleep(TTL_CHECK_S)
        for sid, session in list(app[SESSIONS_KEY].items()):
            try:
                if time.monotonic() - session.created > ttl:
                    LOG.info("session %s reached its time limit (%.0f s)", sid, ttl)
                    await end_session(app, sid, "ttl", f"it reached its time limit ({ttl:g} s)")
                elif await session.peer_silent():
                    LOG.info("session %s: the peer went silent; closing it", sid)
                    await end_session(app, sid, "silent")
            except Exception:  # one session's trouble must not stop the reaping of the others
                LOG.exception("session %s: reaping failed", sid)


# ---------------------------------------------------------------------------------- lifecycle


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    loop = asyncio.get_running_loop()
    avatar = await loop.run_in_executor(None, Avatar.load, config.avatar_path)
    avatar.prepare_for_inference()
    app[RENDERER_KEY] = Renderer(avatar=avatar, lock=asyncio.Lock())
    selection = await loop.run_in_executor(None, config.choose_backend)
    app[SELECTION_KEY] = selection
    LOG.info(summary_line(selection))
    bridge = await Bridge.start(config.pipeline_settings(selection.choice))
    app[BRIDGE_KEY] = bridge
    LOG.info(
        "avatar %s: %d^2, %s, %d torch threads here",
        config.avatar_path,
        avatar.resolution,
        config.schedule.label,
        torch.get_num_threads(),
    )
    reaper = asyncio.ensure_future(_reap_sessions(app))
    yield
    reaper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reaper
    await bridge.close()


async def close_sessions(app: web.Application) -> None:
    open_now: list[str] = list(app[SESSIONS_KEY].keys())
    farewell = "the server is shutting down"
    await asyncio.gather(*(end_session(app, sid, "shutdown", farewell) for sid in open_now))


def create_app(config: ServerConfig) -> web.Application:
    if config.loopback_only:
        use_loopback_only()
    time_encoders()  # every session's encode time goes into its latency budget
    app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=[origin_check])
    app[CONFIG_KEY] = config
    app[SESSIONS_KEY] = {}
    app[PEERS_KEY] = weakref.WeakSet()
    app[CLOSED_KEY] = collections.Counter()
    app.cleanup_ctx.append(engine_ctx)
    app.on_shutdown.append(close_sessions)
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/call", _page("call.html"))
    app.router.add_get("/stills", _page("still.html"))
    app.router.add_static("/web/", WEB_DIR)
    app.router.add_get("/models/face_landmarker.task", face_model)
    app.router.add_get("/health", health)
    app.router.add_get("/still.png", still)
    app.router.add_get("/api/avatar", api_avatar)
    app.router.add_get("/api/stats", api_stats)
    app.router.add_post("/offer", offer)
    registry = CollectorRegistry()
    registry.register(
        ServerCollector(
            sessions=lambda: {sid: s.stats() for sid, s in app[SESSIONS_KEY].items()},
            workers=lambda: app[BRIDGE_KEY].workers() if BRIDGE_KEY in app else [],
            resources=lambda: resources(app) if BRIDGE_KEY in app else {},
            closed=lambda: closed_counts(app),
        )
    )
    app.router.add_get("/metrics", metrics_handler(registry))
    return app
