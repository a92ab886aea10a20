"""Reliability and security, short versions of the long runs (`bench.fuzz`, `bench.churn`,
`bench.soak`, `bench.faults`): a live data-channel fuzz, fuzzed HTTP routes, connect/disconnect
churn with clients that vanish, render workers killed mid-stream, and two sessions that must never see each other's frames or stats. The server is the
real app on a real port (worker processes and all); the clients are real aiortc peers, the
vanishing ones in child processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import strategies as st

from bench import churn, faults, fuzz, rtc_client
from engine.pipeline.schedule import Schedule
from server import probe
from server.app import MAX_OFFER_BYTES, ServerConfig, create_app
from tests.conftest import save_untrained_avatar

REQUEST_TIMEOUT_S = 30.0  # a hang is a failure; a busy machine is not


@pytest.fixture(scope="module")
def avatar_256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reliability") / "avatar.pt"
    return save_untrained_avatar(path, resolution=256)


@contextlib.asynccontextmanager
async def serving(avatar: Path, **settings: Any) -> AsyncIterator[str]:
    """The real app (one worker unless `settings` has a schedule) on a free loopback port, with
    `settings`; yields its URL."""
    settings.setdefault("schedule", Schedule("sequential", 1, 2))
    config = ServerConfig(avatar_path=avatar, loopback_only=True, **settings)
    async with TestServer(create_app(config), host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


@pytest.fixture
async def url(avatar_256: Path) -> AsyncIterator[str]:
    async with serving(avatar_256, max_sessions=8) as address:
        yield address


async def test_live_fuzz_every_message_is_answered_and_nothing_is_half_applied(url: str) -> None:
    report = await fuzz.fuzz(url, 400, random_seed=1)
    print(json.dumps(report, indent=1))
    assert report["messages"] == 400
    assert report["errors_returned"] > 300  # the fuzz is mostly bad messages
    assert report["mismatches"] == 0, report["mismatch_examples"]
    assert report["state_mismatches"] == 0 and report["internal_errors"] == 0
    assert fuzz.passed(report)


# ----------------------------------------------------------------------------- HTTP routes

PATHS = st.sampled_from(
    [
        "/",
        "/call",
        "/stills",
        "/offer",
        "/health",
        "/metrics",
        "/api/avatar",
        "/api/stats",
        "/web/app.js",
        "/web/../server/app.py",
        "/web/%2e%2e/%2e%2e/etc/passwd",
        "/still.png",
        "/nope",
    ]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
    lambda p: "/" + p.lstrip("/")
)
BODIES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    fuzz.JSON.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["offer", "answer", "", None]), "sdp": fuzz.JSON | st.text()},
    ).map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.text(max_size=300).map(
        lambda t: json.dumps({"type": "offer", "sdp": "v=0\r\n" + t}).encode()
    ),
)
REQUESTS = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    PATHS,
    st.sampled_from(["application/json", "text/plain", "application/sdp", "multipart/form-data"]),
    BODIES,
    st.none()  # a still's state: any JSON, or nested past json's recursion limit
    | fuzz.JSON.map(lambda v: json.dumps(v, allow_nan=True))
    | st.integers(1000, 1300).map(lambda n: "[" * n + "]" * n),
)


async def _request(
    http: ClientSession, url: str, method: str, path: str, body: bytes, **kwargs: Any
) -> tuple[int, str]:
    async with http.request(method, url + path, data=body, **kwargs) as r:
        return r.status, await r.text(errors="replace")


async def test_fuzzed_requests_get_4xx_never_500_or_a_hang(url: str) -> None:
    requests = fuzz.draw(REQUESTS, 250, random_seed=2)
    timeout = ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with ClientSession(timeout=timeout) as http:
        for method, path, content_type, body, state in requests:
            params = {"state": state} if state is not None and path == "/still.png" else None
            status, text = await _request(
                http, url, method, path, body, headers={"Content-Type": content_type}, params=params
            )
            assert status < 500, (method, path, body[:80], status, text[:200])
            if path == "/offer":  # no generated body is a valid offer
                assert 400 <= status < 500, (method, body[:80], status)
            if status >= 400 and method != "HEAD":
                assert text.strip(), "a refusal must say why"
        stats = await (await http.get(f"{url}/api/stats")).json()
        assert stats["sessions"] == {} and stats["resources"]["peer_connections"] == 0
        assert (await (await http.get(f"{url}/health")).json())["status"] == "ok"


async def _offer_without_video() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


async def test_hand_picked_bad_offers_name_the_problem(url: str) -> None:
    no_video = await _offer_without_video()
    as_json = {"Content-Type": "application/json"}
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("POST", b"", as_json, 400, "not JSON"),
        ("POST", b"{", as_json, 400, "not JSON"),
        ("POST", b"\xff\xfe", as_json, 400, "not JSON"),
        ("POST", b"[1, 2]", as_json, 400, "JSON object"),
        ("POST", json.dumps({"type": "offer"}).encode(), as_json, 400, "sdp"),
        ("POST", json.dumps({"type": "offer", "sdp": 5}).encode(), as_json, 400, "sdp"),
        ("POST", json.dumps({"type": "answer", "sdp": no_video}).encode(), as_json, 400, "offer"),
        ("POST", json.dumps({"type": "offer", "sdp": no_video}).encode(), as_json, 400, "video"),
        ("POST", json.dumps({"type": "offer", "sdp": "v=0\r\nm=x\r\n"}).encode(), as_json, 400, ""),
        ("POST", b'{"type": "offer", "sdp": "' + b"v" * MAX_OFFER_BYTES + b'"}', as_json, 413, ""),
        ("POST", json.dumps({"type": "offer", "sdp": no_video}).encode(), {}, 415, "json"),
        ("POST", b"sdp", {"Content-Type": "text/plain"}, 415, "application/json"),
        ("GET", b"", {}, 405, ""),
        ("PUT", b"{}", as_json, 405, ""),
    ]
    async with ClientSession(timeout=ClientTimeout(total=REQUEST_TIMEOUT_S)) as http:
        for method, body, headers, status, reason in cases:
            got, text = await _request(http, url, method, "/offer", body, headers=headers)
            assert got == status, (body[:60], headers, got, text[:200])
            assert reason.lower() in text.lower(), (body[:60], text[:200])
        chunked = await http.post(  # no Content-Length: the limit holds while reading
            f"{url}/offer", data=_chunks(b"x" * (2 * MAX_OFFER_BYTES)), headers=as_json
        )
        assert chunked.status == 413
        stats = await (await http.get(f"{url}/api/stats")).json()
        assert stats["sessions"] == {} and stats["resources"]["peer_connections"] == 0
        assert stats["closed"].get("refused", 0) >= 2  # the offers that got as far as aiortc


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 4096):
        yield data[i : i + 4096]


# ----------------------------------------------------------------------------- churn, isolation


async def test_churn_with_vanishing_clients_leaks_nothing(url: str) -> None:
    report = await churn.churn(url, cycles=4)
    print(json.dumps(report, indent=1))
    assert report["closed"].get("silent", 0) == 2, "the killed clients were not noticed"
    assert report["closed"].get("client", 0) == 2
    assert report["resources_after"]["peer_connections"] == 0
    assert report["resources_after"]["worker_sessions"] == 0
    assert report["leaked"] == 0, report["leaks"]


async def test_killed_workers_are_replaced_and_the_session_streams_on(avatar_256: Path) -> None:
    async with serving(avatar_256, schedule=Schedule("parallel", 2, 2)) as address:
        report = await faults.faults(address, kills=2)  # worker 0, then worker 1
    print(json.dumps(report, indent=1))  # resumed_s: the 1-s target is bench.faults' to measure
    assert [r["worker"] for r in report["rounds"]] == [0, 1]
    assert report["session_survived"]
    assert report["restarts_in_stats"] == report["restarts_in_metrics"] == 2
    assert report["errors_told"] == 2 and "died" in report["error_examples"][0]


async def test_two_sessions_never_see_each_others_frames_or_stats(url: str) -> None:
    async with ClientSession() as http:
        a, b = await rtc_client.connect(http, url), await rtc_client.connect(http, url)
        for viewer in (a, b):
            viewer.send({"type": "probe", "on": True})
        b.seq = 500_000  # disjoint seq ranges: a frame with the other's seq would give it away
        for _ in range(6):
            a.control(pose={"yaw": -30.0}, expression={"jawOpen": 0.0})
            b.control(pose={"yaw": 30.0}, expression={"jawOpen": 1.0})
            await asyncio.sleep(0.1)
        seen_a, seen_b = await _seqs_until(a, a.seq), await _seqs_until(b, b.seq)
        stats_a, stats_b = (
            await _stats_at(a, set(range(-1, 7))),
            await _stats_at(b, {-1} | set(range(500_001, 500_007))),
        )
        await a.close()
        await b.close()
    assert seen_a <= set(range(0, 7)), seen_a
    assert seen_b <= {0} | set(range(500_001, 500_007)), seen_b
    assert stats_a["state"]["pose"]["yaw"] == -30.0 and stats_b["state"]["pose"]["yaw"] == 30.0
    assert stats_a["state"]["expression"]["jawOpen"] == 0.0
    assert stats_b["state"]["expression"]["jawOpen"] == 1.0


async def _stats_at(viewer: rtc_client.Viewer, own: set[int]) -> dict[str, Any]:
    """The first `stats` message that has caught up with the viewer's last seq. Stats come once a
    second, so ones already queued may predate the last controls; every one must show only own seqs."""
    while True:
        stats = await viewer.message("stats")
        assert stats["seq"] in own, stats["seq"]
        if stats["seq"] == viewer.seq:
            return stats


async def _seqs_until(viewer: rtc_client.Viewer, last: int) -> set[int]:
    """Every seq read from the viewer's pictures until one carries `last`."""
    seqs: set[int] = set()
    while last % probe.SEQ_MODULO not in seqs:
        got = await asyncio.wait_for(viewer.frames.get(), REQUEST_TIMEOUT_S)
        if got.seq is not None:
            seqs.add(got.seq)
    return seqs


async def test_a_session_past_its_time_limit_is_told_why_and_closed(avatar_256: Path) -> None:
    async with serving(avatar_256, session_ttl_s=2.0) as url, ClientSession() as http:
        viewer = await rtc_client.connect(http, url)
        farewell = await viewer.message("error")
        assert "time limit (2 s)" in farewell["message"]
        deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT_S
        while True:
            stats = await (await http.get(f"{url}/api/stats")).json()
            if not stats["sessions"] and not stats["resources"]["peer_connections"]:
                break
            assert asyncio.get_running_loop().time() < deadline, "the session outlived its TTL"
            await asyncio.sleep(0.2)
        assert stats["closed"] == {"ttl": 1}
        await viewer.close()
