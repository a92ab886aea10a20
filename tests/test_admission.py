"""Admission on every route: with a token, nothing but the page's own files answers without it;
/metrics may take a token of its own; stills render in a niced process with a bounded queue (429
past it); a session's event stream tells why it ended."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench import rtc_client
from engine.pipeline.schedule import Schedule
from server.app import ServerConfig, create_app
from tests.conftest import save_untrained_avatar

GOOD = {"Authorization": "Bearer s3cret"}
SCRAPER = {"Authorization": "Bearer scrape"}
PUBLIC = ("/", "/call", "/stills", "/web/app.js", "/models/face_landmarker.task")
GUARDED = (
    "/health",
    "/api/avatar",
    "/api/stats",
    "/still.png",
    "/api/sessions/000000000000/events",
    "/no/such/route",
)


@pytest.fixture(scope="module")
def tiny_avatar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_avatar(tmp_path_factory.mktemp("admission") / "tiny.pt")


def _config(avatar: Path, **changes: Any) -> ServerConfig:
    settings: dict[str, Any] = {"schedule": Schedule("sequential", 1, 2), **changes}
    return ServerConfig(avatar_path=avatar, loopback_only=True, **settings)


async def test_every_route_but_the_page_files_needs_the_token(tiny_avatar: Path) -> None:
    app = create_app(_config(tiny_avatar, token="s3cret", metrics_token="scrape"))
    async with TestClient(TestServer(app)) as c:
        for path in PUBLIC:
            assert (await c.get(path)).status == 200, path
        for path in GUARDED:
            refused = await c.get(path)
            assert refused.status == 401, path
            assert refused.headers["WWW-Authenticate"] == "Bearer"
            assert "--token" in await refused.text()
            wrong = await c.get(path, headers={"Authorization": "Bearer s3cres"})
            assert wrong.status == 401, path
        assert (await c.get("/health", headers=GOOD)).status == 200
        assert (await c.get("/api/avatar", headers=GOOD)).status == 200
        assert (await c.get("/api/stats", headers=GOOD)).status == 200
        still = await c.get("/still.png", headers=GOOD)
        assert still.status == 200 and still.content_type == "image/png"
        assert (await c.get("/api/sessions/000000000000/events", headers=GOOD)).status == 404
        assert (await c.get("/no/such/route", headers=GOOD)).status == 404
        assert (await c.post("/offer", json={})).status == 401
        # /metrics takes the scraper's token, not the viewers'.
        assert (await c.get("/metrics", headers=SCRAPER)).status == 200
        refused = await c.get("/metrics", headers=GOOD)
        assert refused.status == 401 and "--metrics-token" in await refused.text()
        # A session through the token, told where its events are.
        viewer = await rtc_client.connect(c, **GOOD)
        assert viewer.events == f"/api/sessions/{viewer.session}/events"
        await viewer.close()


async def test_without_a_token_every_route_answers(tiny_avatar: Path) -> None:
    async with TestClient(TestServer(create_app(_config(tiny_avatar)))) as c:
        for path in (*PUBLIC, "/health", "/api/avatar", "/api/stats", "/metrics", "/still.png"):
            assert (await c.get(path)).status == 200, path


async def test_stills_are_bounded_and_rendered_by_a_niced_process(tiny_avatar: Path) -> None:
    app = create_app(_config(tiny_avatar, stills_queue=2))
    async with TestClient(TestServer(app)) as c:
        stats = await (await c.get("/api/stats")).json()
        child = stats["stills"]["pid"]
        server = psutil.Process()
        assert child is not None and child != server.pid
        assert psutil.Process(child).nice() == 19  # the workers and encoders come first

        async def one(i: int) -> tuple[int, str | None]:
            state = f'{{"pose": {{"yaw": {i % 20}}}}}'
            response = await c.get("/still.png", params={"state": state})
            await response.read()
            return response.status, response.headers.get("Retry-After")

        answers = await asyncio.gather(*(one(i) for i in range(30)))
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {200, 429}
        assert 2 <= statuses.count(200) < 30 and statuses.count(429) >= 1
        assert all(retry == "1" for status, retry in answers if status == 429)
        # Once the burst is over, a still renders again; the refusals were counted.
        assert (await c.get("/still.png")).status == 200
        stills = (await (await c.get("/api/stats")).json())["stills"]
        assert stills["refused"] == statuses.count(429)


async def test_the_event_stream_says_why_a_session_ended(tiny_avatar: Path) -> None:
    async with TestClient(TestServer(create_app(_config(tiny_avatar, session_ttl_s=2.0)))) as c:
        viewer = await rtc_client.connect(c)
        assert viewer.events is not None
        reason = await asyncio.wait_for(rtc_client.ended_reason(c, viewer.events), 30)
        assert "time limit (2 s)" in reason
        # A late listener is told too.
        assert "time limit" in await rtc_client.ended_reason(c, viewer.events)
        other = await rtc_client.connect(c)
        assert other.events is not None
        listening = asyncio.ensure_future(rtc_client.ended_reason(c, other.events))
        await other.close()
        assert await asyncio.wait_for(listening, 30) == "the connection closed"
        await viewer.close()
