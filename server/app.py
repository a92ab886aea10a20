"""The aiohttp application: the page, signaling and the API, over a host that does the work.

Routes: `GET /` the page (`web/`), `GET /call` the call demo, `GET /stills` stills only; `POST
/offer` (SDP offer in, answer out: aiortc gathers its candidates before answering, so no trickle);
`GET /api/sessions/{sid}/events` (server-sent events: why the session ended, the moment the
server knows); `GET /api/avatar`; `GET /api/stats`; `GET /health`; `GET /metrics` (Prometheus);
`GET /still.png?state=JSON`, one generator frame as PNG (rendered by a niced process of its own,
at most `stills_queue` at once, 429 past that).

The host (`server.host`) is one node in this process, or a Ray cluster's nodes behind this app
as their front (`server.cluster.front`); the routes are the same. With a token, every route but
the page's own files needs it (`Authorization: Bearer`), the front's and a node's alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from engine.head.canonical_mesh import TASK_BUNDLE
from server import protocol
from server.codecs import time_encoders
from server.config import ServerConfig
from server.host import Host, LocalHost
from server.ice import use_loopback_only
from server.metrics import HostCollector, metrics_handler
from server.node import BadOffer, NodeFull
from server.stills import StillsBusy

__all__ = ["MAX_OFFER_BYTES", "ServerConfig", "create_app"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_OFFER_BYTES = 64 * 1024  # an SDP offer is a few KB
EVENTS_KEEPALIVE_S = 15.0  # a comment line on an idle event stream, so proxies keep it open
# The page's own files: the only routes that answer without the token.
PUBLIC_PATHS = ("/", "/call", "/stills", "/models/face_landmarker.task")
PUBLIC_PREFIXES = ("/web/",)
LOG = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", ServerConfig)
HOST_KEY = web.AppKey("host", Host)


# ---------------------------------------------------------------------------------- admission


def _bearer_matches(request: web.Request, token: str) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # Constant-time: the comparison must not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), token.encode())


@web.middleware
async def admission(request: web.Request, handler: Any) -> web.StreamResponse:
    """Browsers send Origin with cross-site POSTs: only the server's own origin and the configured
    ones may start sessions (a page elsewhere must not spend this server's GPUs). With a token,
    nothing but the page's own files answers without it (stills cost renders; stats and metrics
    tell who is connected)."""
    config = request.app[CONFIG_KEY]
    origin = request.headers.get("Origin")
    if request.method == "POST" and origin is not None:
        own = f"{request.scheme}://{request.host}"
        if origin != own and origin not in config.allowed_origins:
            raise web.HTTPForbidden(text=f"origin {origin} is not allowed to use this server")
    path = request.path
    public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
    if config.token is not None and not public:
        wanted = (
            config.metrics_token if path == "/metrics" and config.metrics_token else config.token
        )
        if not _bearer_matches(request, wanted):
            which = "--metrics-token" if wanted is not config.token else "--token"
            raise web.HTTPUnauthorized(
                text=f"{request.method} {path} needs 'Authorization: Bearer <token>' (the server's {which})",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


# ---------------------------------------------------------------------------------- stills


async def still(request: web.Request) -> web.Response:
    try:
        body = await request.app[HOST_KEY].still_png(request.query.get("state", "{}"))
    except protocol.ProtocolError as exc:
        raise web.HTTPBadRequest(text=f"bad state: {exc}") from exc
    except StillsBusy as exc:
        raise web.HTTPTooManyRequests(
            text=f"too many stills at once: {exc}; try again shortly",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from exc
    except NodeFull as exc:  # a front whose render node failed the still
        raise web.HTTPServiceUnavailable(
            text=str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from exc
    return web.Response(body=body, content_type="image/png", headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------------------------- pages, api


def _page(name: str) -> Callable[[web.Request], Any]:
    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / name, headers={"Cache-Control": "no-cache"})

    return page


async def face_model(request: web.Request) -> web.FileResponse:
    """The Face Landmarker bundle the page tracks a camera with (the same file capture uses)."""
    return web.FileResponse(TASK_BUNDLE, headers={"Cache-Control": "max-age=86400"})


async def health(request: web.Request) -> web.Response:
    return web.json_response(await request.app[HOST_KEY].health())


async def api_avatar(request: web.Request) -> web.Response:
    try:
        return web.json_response(await request.app[HOST_KEY].avatar_info())
    except NodeFull as exc:  # a front with no render node up yet
        raise web.HTTPServiceUnavailable(
            text=str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from exc


async def api_stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[HOST_KEY].stats())


async def session_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events for one session: `ended` with {"reason"} once it ends, then the stream
    closes. 404 for a session this server never had."""
    ends = request.app[HOST_KEY].ends
    sid = request.match_info["sid"]
    if not ends.known(sid):
        raise web.HTTPNotFound(text=f"no session {sid!r} here")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    waiting = asyncio.ensure_future(ends.wait(sid))
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=EVENTS_KEEPALIVE_S)
            if done:
                data = json.dumps({"session": sid, "reason": waiting.result()})
                await response.write(f"event: ended\ndata: {data}\n\n".encode())
                break
            await response.write(b": keep-alive\n\n")
        await response.write_eof()
    except ConnectionResetError:  # the page went first (closed, reloaded): nobody to tell
        pass
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    return response


# ---------------------------------------------------------------------------------- signaling


async def _read_offer(request: web.Request) -> tuple[str, bool]:
    """The offer's SDP, and whether it asks for the synthetic floor (`"source": "floor"`)."""
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
    return sdp, source == "floor"


async def offer(request: web.Request) -> web.Response:
    sdp, floor = await _read_offer(request)
    try:
        answer = await request.app[HOST_KEY].offer(sdp, floor)
    except NodeFull as exc:
        raise web.HTTPServiceUnavailable(
            text=str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from exc
    except BadOffer as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    sid = answer["session"]
    return web.json_response({**answer, "events": f"/api/sessions/{sid}/events"})


# ---------------------------------------------------------------------------------- lifecycle


def host_ctx(make_host: Callable[[ServerConfig], Host]) -> Callable[[web.Application], Any]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        host = make_host(app[CONFIG_KEY])
        try:
            await host.start()
        except BaseException:  # what did start (workers, the still renderer) must not outlive it
            await host.close()
            raise
        app[HOST_KEY] = host
        yield
        await host.close()

    return ctx


async def close_sessions(app: web.Application) -> None:
    if HOST_KEY in app:
        await app[HOST_KEY].close_sessions()


def create_app(
    config: ServerConfig, make_host: Callable[[ServerConfig], Host] = LocalHost
) -> web.Application:
    """The app over `make_host(config)`: one node here (the default), or a cluster's front."""
    if config.loopback_only:
        use_loopback_only()
    time_encoders()  # every session's encode time goes into its latency budget
    app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=[admission])
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(host_ctx(make_host))
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
    app.router.add_get("/api/sessions/{sid}/events", session_events)
    app.router.add_post("/offer", offer)
    registry = CollectorRegistry()
    registry.register(
        HostCollector(lambda: app[HOST_KEY].metrics() if HOST_KEY in app else iter(()))
    )
    app.router.add_get("/metrics", metrics_handler(registry))
    return app
