"""The interim server: a page, stills of the avatar rendered from a control state, /health, and
clear refusals of bad states; run.py refuses a file that is not an avatar before serving."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

import run
from engine.head.canonical_mesh import TASK_BUNDLE
from engine.pipeline.schedule import Schedule
from server.app import ServerConfig, create_app
from tests.conftest import save_untrained_avatar


@pytest.fixture(scope="module")
def tiny_avatar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("avatar") / "tiny.pt"
    return save_untrained_avatar(path)


def _config(avatar: Path) -> ServerConfig:
    return ServerConfig(avatar_path=avatar, schedule=Schedule("sequential", 1, 2))


def _picture(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


async def test_page_health_and_stills(tiny_avatar: Path) -> None:
    app = create_app(_config(tiny_avatar))
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/")
        assert page.status == 200 and "/web/app.js" in await page.text()
        for path in ("/call", "/stills", "/web/app.js", "/web/avatar-client.js", "/web/probe.js"):
            assert (await client.get(path)).status == 200, path
        # What the page tracks a camera with: the vendored tasks-vision and the model bundle.
        wasm = await client.get("/web/vendor/tasks-vision/wasm/vision_wasm_internal.wasm")
        assert wasm.status == 200 and wasm.content_type == "application/wasm"
        model = await client.get("/models/face_landmarker.task")
        assert model.status == 200 and len(await model.read()) == TASK_BUNDLE.stat().st_size
        health = await (await client.get("/health")).json()
        assert health["status"] == "ok" and health["webrtc"] is True
        assert [w["alive"] for w in health["workers"]] == [True]
        assert health["avatar"]["resolution"] == 64
        assert "jawOpen" in health["avatar"]["expression_names"]

        neutral = await client.get("/still.png")
        assert neutral.status == 200 and neutral.content_type == "image/png"
        first = _picture(await neutral.read())
        assert first.shape == (64, 64, 3)
        state = json.dumps({"pose": {"yaw": 30}, "expression": {"jawOpen": 1.0}})
        turned = await client.get("/still.png", params={"state": state})
        assert turned.status == 200
        assert not np.array_equal(_picture(await turned.read()), first)  # the controls count


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"expression": {"noSuchShape": 1}}', "noSuchShape"),
        ('{"expression": {"jawOpen": 7}}', "jawOpen"),
        ('{"pose": {"yaw": 400}}', "yaw"),
        ('{"colour": 1}', "colour"),
        # Deeper than json's recursion limit, yet within aiohttp's 8190-byte request line.
        ("[" * 1300 + "]" * 1300, "nested too deeply"),  # was a RecursionError: a 500
        ('{"pose": {"yaw": 1' + "0" * 400 + "}}", "finite"),
        ('{"pose": {"yaw": 1' + "0" * 4400 + "}}", "digits"),  # was a ValueError: a 500
    ],
)
async def test_bad_states_are_refused_with_the_reason(
    tiny_avatar: Path, state: str, message: str
) -> None:
    async with TestClient(TestServer(create_app(_config(tiny_avatar)))) as client:
        response = await client.get("/still.png", params={"state": state})
        assert response.status == 400
        assert message in await response.text()


def test_run_refuses_a_file_that_is_not_an_avatar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    assert run.main(["--avatar", str(bad)]) == 2
    assert "not an avatar file" in capsys.readouterr().err
    assert run.main(["--avatar", str(tmp_path / "absent.pt")]) == 2


def test_ice_server_flags() -> None:
    stun = run.ice_server("stun:stun.example.org:3478")
    assert stun.urls == "stun:stun.example.org:3478"
    turn = run.ice_server("turn://ann:p%40ss@turn.example.org:3478")
    assert (turn.urls, turn.username, turn.credential) == (
        "turn:turn.example.org:3478",
        "ann",
        "p@ss",
    )
    with pytest.raises(argparse.ArgumentTypeError):
        run.ice_server("http://example.org")


def test_bitrate_cap_is_applied_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc.codecs import h264, vpx

    from server.codecs import max_bitrate, set_max_bitrate

    for module in (vpx, h264):  # restored after the test
        for name in ("MAX_BITRATE", "MIN_BITRATE", "DEFAULT_BITRATE"):
            monkeypatch.setattr(module, name, getattr(module, name))
    set_max_bitrate(400_000)
    assert max_bitrate() == {"vp8": 400_000, "h264": 400_000}
    assert vpx.DEFAULT_BITRATE <= 400_000 and h264.MIN_BITRATE <= 400_000
    with pytest.raises(ValueError, match="too low"):
        set_max_bitrate(10)
