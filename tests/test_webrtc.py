"""The WebRTC server end to end: a real aiortc peer in this process connects through the real aiohttp
app (worker processes and all) on 127.0.0.1, drives the avatar over the data channel and reads the
video back, including the latency probe's stamped seq."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection

from bench import rtc_client
from bench.rtc_client import Viewer
from engine.pipeline.schedule import Schedule
from engine.render.avatar import DEFAULT_AVATAR
from server import probe
from server.app import ServerConfig, create_app
from tests.conftest import save_untrained_avatar

WAIT_S = 30.0  # generous: the machine may be busy


@pytest.fixture(scope="module")
def avatar_256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained avatar with the tiny networks at 256^2 (the probe code needs 8 px blocks)."""
    path = tmp_path_factory.mktemp("webrtc") / "avatar.pt"
    return save_untrained_avatar(path, resolution=256)


def _config(avatar: Path, **changes: Any) -> ServerConfig:
    settings: dict[str, Any] = {"schedule": Schedule("sequential", 1, 2), **changes}
    return ServerConfig(avatar_path=avatar, loopback_only=True, **settings)


async def connect(client: TestClient) -> Viewer:
    return await rtc_client.connect(client)


@pytest.fixture
async def client(avatar_256: Path) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(_config(avatar_256, max_sessions=2)))) as c:
        yield c


@pytest.fixture
async def shipped_client() -> AsyncIterator[TestClient]:
    """The shipped (trained) avatar: an untrained one's picture barely depends on its input (yaw
    -30 against +30 moved it by 0.02 grey levels), so only the codec's noise told them apart."""
    async with TestClient(TestServer(create_app(_config(DEFAULT_AVATAR)))) as c:
        yield c


async def test_controls_drive_the_video_and_the_probe_reads_back(
    shipped_client: TestClient,
) -> None:
    client = shipped_client
    peer = await connect(client)
    peer.send({"type": "probe", "on": True})
    peer.send({"type": "control", "seq": 1, "t": 0, "pose": {"yaw": -30}})
    left = (await peer.frame_with_seq(1)).image
    peer.send({"type": "control", "seq": 2, "t": 1, "pose": {"yaw": 30}})
    right = (await peer.frame_with_seq(2)).image
    assert left.shape == (256, 256, 3)
    band = probe.block_size(256)
    change = np.abs(left[:-band].astype(int) - right[:-band].astype(int)).mean()
    assert change > 1.0, "turning the head did not change the picture"

    peer.send({"type": "ping", "t": 123.5})
    assert (await peer.message("pong"))["t"] == 123.5
    stats = await peer.message("stats")
    assert stats["frames"] > 0 and stats["probe"] is True
    assert {"warp_distance", "warp_age_ms", "warp_age_ms_p95", "beyond_jump_limit"} <= set(stats)
    await peer.pc.close()


async def test_bad_messages_get_errors_and_break_nothing(client: TestClient) -> None:
    peer = await connect(client)
    peer.send({"type": "probe", "on": True})
    peer.send({"type": "control", "seq": 5, "t": 0, "expression": {"jawOpen": 9}})
    error = await peer.message("error")
    assert "jawOpen" in error["message"] and error["seq"] == 5
    peer.channel.send("not json at all")
    assert "not JSON" in (await peer.message("error"))["message"]
    peer.send({"type": "control", "seq": 6, "t": 0, "expression": {"jawOpen": 0.5}})
    await peer.frame_with_seq(6)  # the session goes on
    peer.send({"type": "control", "seq": 6, "t": 0})
    assert "not newer" in (await peer.message("error"))["message"]
    await peer.pc.close()


async def test_bad_offers_are_refused(client: TestClient) -> None:
    for body, reason in [
        ("nope", "not JSON"),
        (json.dumps({"type": "answer", "sdp": "v=0"}), "offer"),
        (json.dumps({"type": "offer", "sdp": "hello"}), "SDP"),
        (json.dumps({"type": "offer", "sdp": "v=0\r\nm=garbage\r\n"}), "bad offer"),
    ]:
        response = await client.post(
            "/offer", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400, body
        assert reason in await response.text()
    stats = await (await client.get("/api/stats")).json()
    assert stats["sessions"] == {}  # nothing half-made is left


async def test_session_limit_and_closing_frees_everything(client: TestClient) -> None:
    first, second = await connect(client), await connect(client)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("control")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    full = await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    assert full.status == 503 and full.headers["Retry-After"].isdigit()
    await pc.close()
    stats = await (await client.get("/api/stats")).json()
    assert set(stats["sessions"]) == {first.session, second.session}
    await first.pc.close()
    await second.pc.close()
    deadline = time.monotonic() + WAIT_S
    while (await (await client.get("/api/stats")).json())["sessions"]:
        assert time.monotonic() < deadline, "closed sessions were not freed"
        await asyncio.sleep(0.1)
    third = await connect(client)  # there is room again
    await third.pc.close()


async def test_api_avatar(client: TestClient) -> None:
    info = await (await client.get("/api/avatar")).json()
    assert info["resolution"] == 256 and "jawOpen" in info["expression_names"]
    assert info["pose_limits_deg"]["yaw"] == [-45.0, 45.0]
    assert info["rest_expression"] == {}  # an avatar that does not know its rest starts neutral
    assert info["expression_limits"] == {}  # nor its limits: every weight is drawn as sent
    assert info["source"] is None  # nor where its face came from
    # How the workers run the networks: as trained here (the tests' ServerConfig asks for it).
    assert info["backend"]["runtime"] == "torch" and info["backend"]["precision"] == "fp32"
    stats = await (await client.get("/api/stats")).json()
    assert stats["backend"]["label"] == "torch fp32" and stats["backend"]["source"] == "requested"
    assert (
        info["view_limits_deg"]
        == info["accepted_view_deg"]
        == {"yaw": [-60.0, 60.0], "pitch": [-30.0, 30.0]}
    )


async def test_a_session_starts_at_the_avatars_rest_expression(tmp_path: Path) -> None:
    rest = {"mouthSmileLeft": 0.68, "eyeSquintLeft": 0.35}
    source = {"video": "franck.mp4", "licence": "for research"}
    limits = {"jawOpen": 0.5}
    summary = {"rest_expression": rest, "source": source, "frames": 4800}
    summary |= {"expression_limits": limits}
    avatar = save_untrained_avatar(tmp_path / "rest.pt", 256, summary)
    async with TestClient(TestServer(create_app(_config(avatar)))) as c:
        info = await (await c.get("/api/avatar")).json()
        assert info["rest_expression"] == rest
        assert info["expression_limits"] == limits  # the page's sliders say where they hold
        assert info["source"] == {"clip": "franck.mp4", "frames": 4800, "licence": "for research"}
        peer = await connect(c)
        expression = (await peer.message("stats"))["state"]["expression"]
        assert {k: v for k, v in expression.items() if v} == rest
        peer.send({"type": "control", "seq": 1, "t": 0, "expression": {"jawOpen": 0.5}})
        while (stats := await peer.message("stats"))["seq"] != 1:
            pass
        assert stats["state"]["expression"] == {**expression, "jawOpen": 0.5}  # the rest stays
        await peer.pc.close()
        # A still with no expression given shows the rest too.
        plain = await (await c.get("/still.png")).read()
        state = json.dumps({"expression": rest})
        assert plain == await (await c.get("/still.png", params={"state": state})).read()
        zeros = json.dumps({"expression": {k: 0 for k in rest}})
        assert plain != await (await c.get("/still.png", params={"state": zeros})).read()


async def test_metrics_in_prometheus_format(client: TestClient) -> None:
    peer = await connect(client)
    peer.send({"type": "probe", "on": True})
    for seq in range(1, 4):  # frames are rendered when controls change
        peer.send({"type": "control", "seq": seq, "t": 0, "pose": {"yaw": 5 * seq}})
        await peer.frame_with_seq(seq)
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type.startswith("text/plain")
    text = await response.text()
    assert "avatar_sessions 1.0" in text
    assert 'avatar_worker_up{worker="0"} 1.0' in text
    assert f'avatar_session_fps{{session="{peer.session}"}}' in text
    await peer.pc.close()


async def test_a_message_flood_is_rate_limited_and_the_session_goes_on(client: TestClient) -> None:
    peer = await connect(client)
    peer.send({"type": "probe", "on": True})
    for seq in range(1, 1001):  # far over the limit, all at once
        peer.send({"type": "control", "seq": seq, "t": 0, "pose": {"yaw": seq % 30}})
    error = await peer.message("error")
    assert "rate limit" in error["message"]
    stats = await peer.message("stats")
    assert stats["rate_limited"] > 0
    await asyncio.sleep(1.0)  # the bucket refills
    peer.send({"type": "control", "seq": 5000, "t": 0, "pose": {"yaw": 1}})
    await peer.frame_with_seq(5000)
    await peer.pc.close()


async def test_token_and_origin_checks(avatar_256: Path) -> None:
    app = create_app(
        _config(avatar_256, token="s3cret", allowed_origins=("https://friend.example",))
    )
    async with TestClient(TestServer(app)) as c:
        body = {"type": "offer", "sdp": "v=0\r\n"}
        assert (await c.post("/offer", json=body)).status == 401
        wrong = {"Authorization": "Bearer s3cres"}
        assert (await c.post("/offer", json=body, headers=wrong)).status == 401
        good = {"Authorization": "Bearer s3cret"}
        assert (await c.post("/offer", json=body, headers=good)).status == 400  # past the token
        foreign = {**good, "Origin": "https://evil.example"}
        response = await c.post("/offer", json=body, headers=foreign)
        assert response.status == 403 and "evil.example" in await response.text()
        friend = {**good, "Origin": "https://friend.example"}
        assert (await c.post("/offer", json=body, headers=friend)).status == 400
        for path in ("/web/../server/app.py", "/web/%2e%2e/server/app.py"):
            response = await c.get(path, headers=good)
            assert response.status in (403, 404)  # static files stay in web/


async def test_the_latency_budget_and_the_floor(client: TestClient) -> None:
    """Every server stage of a driven session is timed (server/budget.py); a floor session goes
    the same way with a synthetic pattern and no renderer."""
    for source in ("avatar", "floor"):
        peer = await rtc_client.connect(client, source=source)
        peer.send({"type": "probe", "on": True})
        for seq in range(1, 25):
            peer.send({"type": "control", "seq": seq, "t": seq, "pose": {"yaw": seq - 12}})
            await asyncio.sleep(1 / 30)
        received = await peer.frame_with_seq(24)
        assert received.image.shape == (256, 256, 3)
        deadline = time.monotonic() + WAIT_S
        while True:
            stats = await peer.message("stats")
            if set(stats.get("budget_ms", {})) == {
                "receive", "queue", "render", "copy_out", "wait_encoder", "encode"
            } or time.monotonic() > deadline:  # fmt: skip
                break
        assert stats["source"] == source
        assert set(stats["budget_ms"]) == {
            "receive", "queue", "render", "copy_out", "wait_encoder", "encode"
        }  # fmt: skip
        assert all(v >= 0 for v in stats["budget_ms"].values())
        assert stats["budget_ms"]["encode"] > 0 and stats["new_pictures"] >= 2
        await peer.pc.close()
    # A source other than these is refused by name.
    response = await client.post("/offer", json={"sdp": "v=0\r\n", "type": "offer", "source": "x"})
    assert response.status == 400 and '"source"' in await response.text()
