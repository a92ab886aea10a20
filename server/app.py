"""The aiohttp application. Until the WebRTC server lands it serves the shipped avatar as still
pictures: a page with a few controls, `GET /still.png?state=JSON` rendering one generator frame,
and `/health`. The page says plainly that the live stream is not there yet."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from aiohttp import web
from PIL import Image

from engine.avatar import DEFAULT_AVATAR, Avatar
from engine.controls import Controls, neutral, update

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_STATE_CHARS = 8192  # a full control state is ~2 KB of JSON
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    avatar_path: Path = DEFAULT_AVATAR


@dataclass
class Renderer:
    """The loaded avatar and the lock that keeps one render at a time (each uses every core)."""

    avatar: Avatar
    lock: asyncio.Lock


CONFIG_KEY = web.AppKey("config", ServerConfig)
RENDERER_KEY = web.AppKey("renderer", Renderer)


def parse_state(text: str, names: tuple[str, ...]) -> Controls:
    """A `state` query value, a JSON object like a control message ({"expression": {...},
    "pose": {...}, "view": {...}}), -> Controls; fields not given are neutral."""
    if len(text) > MAX_STATE_CHARS:
        raise ValueError(f"state is {len(text)} characters, more than {MAX_STATE_CHARS}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"state is not JSON: {exc.msg}") from exc
    if not isinstance(message, dict):
        raise ValueError("state must be a JSON object")
    unknown = set(message) - {"expression", "pose", "view"}
    if unknown:
        raise ValueError(f"unknown state fields: {sorted(unknown)}")
    return update(
        neutral(names),
        names,
        expression=message.get("expression"),
        pose=message.get("pose"),
        view=message.get("view"),
    )


def encode_png(picture: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return out.getvalue()


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "still.html")


async def health(request: web.Request) -> web.Response:
    avatar = request.app[RENDERER_KEY].avatar
    return web.json_response(
        {
            "status": "ok",
            "avatar": {
                "path": str(request.app[CONFIG_KEY].avatar_path),
                "resolution": avatar.resolution,
                "expression_names": list(avatar.expression_names),
                "inert": [
                    n
                    for n, inert in zip(
                        avatar.expression_names, avatar.head.data.expression_inert, strict=True
                    )
                    if inert
                ],
            },
            "webrtc": False,
        }
    )


async def still(request: web.Request) -> web.Response:
    renderer = request.app[RENDERER_KEY]
    try:
        controls = parse_state(request.query.get("state", "{}"), renderer.avatar.expression_names)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"bad state: {exc}") from exc
    loop = asyncio.get_running_loop()
    async with renderer.lock:  # renders run in a thread: the event loop keeps serving
        picture = await loop.run_in_executor(None, renderer.avatar.render, controls)
    body = await loop.run_in_executor(None, encode_png, picture)
    return web.Response(body=body, content_type="image/png", headers={"Cache-Control": "no-store"})


async def avatar_ctx(app: web.Application) -> AsyncIterator[None]:
    path = app[CONFIG_KEY].avatar_path
    loop = asyncio.get_running_loop()
    avatar = await loop.run_in_executor(None, Avatar.load, path)
    avatar.prepare_for_inference()
    LOG.info(
        "avatar %s loaded (%d^2, %s threads)", path, avatar.resolution, torch.get_num_threads()
    )
    app[RENDERER_KEY] = Renderer(avatar=avatar, lock=asyncio.Lock())
    yield


def create_app(config: ServerConfig) -> web.Application:
    app = web.Application()
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(avatar_ctx)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/still.png", still)
    return app
