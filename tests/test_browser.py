"""The page in a real headless Chromium (Debian's) against a real server process: the video plays,
a slider changes the picture, motion-to-photon latency is measured, and the /call demo receives the
avatar through a second peer connection. Skipped, with the reason, where chromium is not installed
(`make test` installs it where it can)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench import browser
from bench.local_server import free_port, local_server
from engine.render.avatar import DEFAULT_AVATAR
from server.cluster.local import kill_process_tree
from tests.conftest import save_untrained_avatar

pytestmark = pytest.mark.skipif(
    browser.chromium_path() is None,
    reason="Debian's chromium is not installed here: the real-browser tests did not run",
)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The shipped avatar, as trained (fp32 torch: no start-up measuring here; test_backends and
    test_bench_engine cover the measured choice). An untrained avatar's generator frames barely
    depend on the controls, and a slider's jump is rendered by the generator (the jump rule)."""
    extra = ["--workers", "1", "--num-warps", "2", "--precision", "fp32", "--runtime", "torch"]
    with local_server(DEFAULT_AVATAR, extra) as server:
        yield server.url


def _video_picture(page: object) -> np.ndarray:
    shot = page.locator("#video").screenshot()  # type: ignore[attr-defined]
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.int16)


def test_page_plays_sliders_drive_and_latency_is_measured(server_url: str) -> None:
    with browser.browser_page(server_url) as page:
        browser.wait_connected(page)
        start = page.evaluate("document.getElementById('video').currentTime")
        page.wait_for_timeout(1500)
        assert page.evaluate("document.getElementById('video').currentTime") > start  # playing
        page.evaluate("document.getElementById('overlay').hidden = true")  # compare the avatar only
        before = _video_picture(page)
        page.evaluate(
            """() => {
              const input = [...document.querySelectorAll('#pose input')][0];  // yaw
              input.value = 40;
              input.dispatchEvent(new Event('input'));
            }"""
        )
        page.wait_for_timeout(1500)
        after = _video_picture(page)
        band = after.shape[0] // 30  # leave out the probe's code along the bottom
        assert np.abs(after[:-band] - before[:-band]).mean() > 1.0, "the slider changed nothing"
        result = page.evaluate("window.avatarPage.latencyTest(4)")
        # Measured at all (a busy machine renders slowly: the count is not the point here).
        assert result["samples"] >= 1 and 0 < result["p50"] < 10_000
        assert page.locator("#download-csv").is_visible()


def test_call_demo_receives_the_avatar(server_url: str) -> None:
    with browser.browser_page(server_url, "/call") as page:
        page.wait_for_function(
            "() => document.getElementById('bob').readyState >= 2", timeout=60_000
        )
        assert page.evaluate("document.getElementById('status').textContent") == "in call"
        assert page.evaluate("document.getElementById('bob').videoWidth") == 256


def test_the_page_says_why_the_server_ended_the_session(tmp_path: Path) -> None:
    path = save_untrained_avatar(tmp_path / "avatar.pt", resolution=256)
    extra = ["--workers", "1", "--num-warps", "2", "--session-ttl", "4"]
    with local_server(path, extra) as server, browser.browser_page(server.url) as page:
        browser.wait_connected(page)
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('session ended')",
            timeout=30_000,
        )
        assert "time limit (4 s)" in (page.locator("#status").text_content() or "")


def test_the_benchmark_stacks_the_budget_beside_the_floor_and_drives_sessions(
    server_url: str, tmp_path: Path
) -> None:
    report = browser.measure(server_url, 4, "vp8", floor=True, sessions=2, budget=True)
    budget = report["budget_ms"]
    stages = ["send", "receive", "queue", "render", "copy_out", "wait_encoder", "encode"]
    assert list(budget)[: len(stages)] == stages
    assert {"network", "jitter_buffer", "decode", "display"} <= set(budget)
    # The stages are the motion-to-photon p50, split: they add up to it.
    assert abs(sum(v or 0 for v in budget.values()) - report["mtp_ms_p50"]) < 0.5
    assert report["backend"]["label"]
    floor = report["floor"]
    assert floor["fps"] > 0 and floor["mtp_ms_p50"] > 0 and floor["budget_ms"]["encode"] > 0
    assert report["above_floor_ms_p50"] == round(report["mtp_ms_p50"] - floor["mtp_ms_p50"], 2)
    assert len(report["sessions"]) == 2 and all(s["fps"] > 0 for s in report["sessions"])
    browser.plot_budget(report, tmp_path / "budget.png")
    assert Image.open(tmp_path / "budget.png").size[0] > 500


def test_the_page_through_a_cluster_front_says_when_its_node_dies(tmp_path: Path) -> None:
    """The page (with its token) at a front of a real 2-node Ray cluster (`bench.cluster --hold`,
    its own processes): the avatar plays from a render node; that node's processes SIGKILLed, the
    page says why its video stopped; reloaded, it plays from the other node."""
    path = save_untrained_avatar(tmp_path / "avatar.pt", resolution=256)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer s3cret"}
    command = [sys.executable, "-m", "bench.cluster", "--hold", "--nodes", "2", "--port", str(port)]
    command += ["--avatar", str(path), "--num-warps", "2", "--token", "s3cret"]
    front = subprocess.Popen(command, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if _get_json(f"{url}/health", auth)["nodes_up"] == 2:
                    break
            except OSError:
                pass
            assert front.poll() is None and time.monotonic() < deadline, "the front did not start"
            time.sleep(1)
        with browser.browser_page(url, "/?token=s3cret") as page:
            browser.wait_connected(page)
            session = page.evaluate("window.avatarPage.avatar.session")
            node = _get_json(f"{url}/api/stats", auth)["sessions"][session]["node"]
            pid = next(n["load"]["pid"] for n in _get_json(f"{url}/health", auth)["nodes"]
                       if n["name"] == node)  # fmt: skip
            kill_process_tree(pid)
            page.wait_for_function(
                "() => document.getElementById('status').textContent.includes('render node')",
                timeout=30_000,
            )
            status = page.locator("#status").text_content() or ""
            assert f"session ended: its render node {node} stopped" in status
            page.reload()
            browser.wait_connected(page)
            again = page.evaluate("window.avatarPage.avatar.session")
            placed = _get_json(f"{url}/api/stats", auth)["sessions"][again]["node"]
            assert placed != node  # the other node, while the killed one restarts
    finally:
        front.send_signal(signal.SIGINT)
        try:
            front.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(front.pid, signal.SIGKILL)
            front.wait()
    assert front.returncode == 0


def _get_json(url: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_benchmark_measures_a_session_under_a_flood_of_stills(server_url: str) -> None:
    report = browser.measure(server_url, 3, "vp8", stills=20)
    flood = report["stills_flood"]
    assert flood["concurrent"] == 20 and flood["rounds"] == 2
    assert len(flood["alone"]) == len(flood["flooded"]) == 2
    assert all(r["fps"] > 0 and r["mtp_ms_p95"] > 0 for r in flood["alone"] + flood["flooded"])
    answers = [f["answers"] for f in flood["floods"]]
    assert all(set(a) <= {"200", "429"} and a.get("200", 0) >= 1 for a in answers)
    assert flood["p95_rise"] == round(
        flood["mtp_ms_p95_flooded"] / flood["mtp_ms_p95_alone"] - 1, 3
    )
    assert flood["server_mb"]["before"] > 0 and flood["server_mb"]["after"] > 0
