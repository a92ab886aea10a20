"""The aiohttp application. Until the WebRTC server lands, it serves an honest placeholder page
that says what exists so far (the engine) and no avatar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080


CONFIG_KEY = web.AppKey("config", ServerConfig)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "placeholder.html")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "avatar": None, "webrtc": False})


def create_app(config: ServerConfig) -> web.Application:
    app = web.Application()
    app[CONFIG_KEY] = config
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    return app
