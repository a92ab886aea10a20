"""The placeholder server answers honestly: a page that says no avatar is served, and /health."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from server.app import ServerConfig, create_app


async def test_placeholder_page_and_health() -> None:
    async with TestClient(TestServer(create_app(ServerConfig()))) as client:
        page = await client.get("/")
        assert page.status == 200
        assert "No avatar is served yet" in await page.text()
        health = await client.get("/health")
        assert (await health.json()) == {"status": "ok", "avatar": None, "webrtc": False}
