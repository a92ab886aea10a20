"""Motion-to-photon latency and playback quality measured in a real headless Chromium.

    python -m bench.browser [--url URL] [--seconds S] [--codec vp8|h264] [--camera CLIP] --json OUT

Without --url it starts a server of its own (`run.py --loopback-only` on a free port, the shipped
avatar unless --avatar) and stops it afterwards. Chromium is Debian's (`/usr/bin/chromium`, driven by
Playwright with `executable_path`; no browser is downloaded), with flags that keep all traffic on
this machine. The page's own latency test runs: the head sweeps at 30 Hz, every displayed frame's
stamped seq is read in requestVideoFrameCallback, and motion-to-photon = display time - send time.
JSON keys: DESIGN.md, "Measurement contracts".

With --camera CLIP the page is driven by a face instead: Chromium's webcam plays CLIP (a Y4M made
from it, bench/fake_camera.py), the page tracks it and sends the controls, and the report adds
camera-to-avatar latency, tracking figures and how the sent controls follow an offline tracking
of the same clip (bench/camera.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.camera import offline_series, summarise
from bench.fake_camera import chromium_camera_flags, write_y4m
from bench.local_server import run_against, server_parser, write_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    return found


@contextlib.contextmanager
def browser_page(url: str, path: str = "/", extra_args: list[str] | None = None) -> Iterator[Any]:
    """A Playwright page of headless Debian chromium at url + path (`extra_args`: more flags)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable, args=CHROMIUM_FLAGS + (extra_args or [])
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + path)
            yield page
        finally:
            browser.close()


def wait_connected(page: Any, timeout_s: float = 60.0) -> None:
    page.wait_for_function(
        "() => window.avatarPage && document.getElementById('video').readyState >= 2",
        timeout=timeout_s * 1000,
    )


def _playback(url: str, seconds: float, result: dict[str, Any], stats: Any) -> dict[str, Any]:
    """The latency test's result and the page's playback stats as the report's common keys."""
    return {
        "seconds": seconds,
        "frames": result["samples"],
        "fps": round(result["fps"], 2),
        "mtp_ms_p50": round(result["p50"], 2) if result["p50"] is not None else None,
        "mtp_ms_p95": round(result["p95"], 2) if result["p95"] is not None else None,
        "jitter_buffer_ms": stats and stats.get("jitterBufferMs"),
        "decode_ms": stats and stats.get("decodeMs"),
        "dropped": stats and stats.get("dropped"),
        "codec": stats and stats.get("codec"),
        "resolution": stats and [stats.get("width"), stats.get("height")],
        "url": url,
    }


def measure(url: str, seconds: float, codec: str) -> dict[str, Any]:
    with browser_page(url, f"/?codec={codec}") as page:
        wait_connected(page)
        page.wait_for_timeout(1500)  # the first stats
        result = page.evaluate(f"window.avatarPage.latencyTest({seconds})", None)
        page.wait_for_timeout(1200)
        stats = page.evaluate("window.avatarStats")
    return _playback(url, seconds, result, stats)


CAMERA_WIDTH = 640  # the fake webcam's width: a laptop camera's, and the sample clip's own


def wait_driving(page: Any, timeout_s: float = 60.0) -> None:
    """Until the camera drives the avatar (the tracker loaded and a face tracked)."""
    page.wait_for_function(
        "() => window.avatarPage?.drive && window.avatarPage.drive.counts.faces > 0",
        timeout=timeout_s * 1000,
    )


def measure_camera(
    url: str,
    clip: Path,
    seconds: float,
    codec: str,
    log_out: Path | None = None,
    clip_seconds: float | None = None,
) -> dict[str, Any]:
    """The page driven by `clip` as its webcam for `seconds`: the usual keys (the controls are
    the face's) and `camera` (DESIGN.md's keys, then bench/camera.py's)."""
    with tempfile.TemporaryDirectory() as tmp:
        y4m = Path(tmp) / "camera.y4m"
        frames, fps = write_y4m(clip, y4m, clip_seconds, width=CAMERA_WIDTH)
        offline = offline_series(clip, frames)
        flags = chromium_camera_flags(y4m)
        with browser_page(url, f"/?codec={codec}&camera=1", flags) as page:
            wait_connected(page)
            wait_driving(page)
            page.wait_for_timeout(1500)  # the first stats
            result = page.evaluate(f"window.avatarPage.latencyTest({seconds})", None)
            report = page.evaluate("window.avatarPage.cameraReport()")
            stats = page.evaluate("window.avatarStats")
    if log_out is not None:  # every tracked frame: times, the face as tracked, what was sent
        log_out.write_text(json.dumps(report["log"]) + "\n")
    latency = result.get("camera") or {}
    got = summarise(report, offline, frames, fps)
    camera = {
        "camera_fps": got["camera_fps"],
        "track_fps": got["tracked_fps"],
        "face_share": got["face_share"],
        "track_ms_p50": got["tracking_ms_p50"],
        "c2p_ms_p50": latency.get("p50"),
        "c2p_ms_p95": latency.get("p95"),
        "corr": got["follow"]["correlation"],
        "c2p_parts_ms_p50": latency.get("parts"),
        "c2p_samples": latency.get("samples"),
        "clip": clip.name,
        "clip_frames": frames,
        "clip_fps": round(fps, 3),
        **got,
    }
    return _playback(url, seconds, result, stats) | {"camera": camera}


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.browser", __doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--codec", choices=("vp8", "h264"), default="vp8")
    parser.add_argument(
        "--camera", type=Path, default=None, help="a face clip the browser's webcam plays"
    )
    parser.add_argument(
        "--camera-clip-seconds",
        type=float,
        default=None,
        help="with --camera: the webcam loops the clip's first this many seconds (all of it)",
    )
    parser.add_argument(
        "--camera-log", type=Path, default=None, help="with --camera: the page's per-frame log"
    )
    args = parser.parse_args(argv)
    if args.seconds < 2:
        parser.error("--seconds must be >= 2")
    if chromium_path() is None:
        print(
            "error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr
        )
        return 2
    if args.camera is not None and not args.camera.is_file():
        parser.error(f"--camera: no such clip: {args.camera}")
    if args.camera is not None:
        clip = args.camera
        report = run_against(
            args.url,
            args.avatar,
            lambda url, _pid: measure_camera(
                url, clip, args.seconds, args.codec, args.camera_log, args.camera_clip_seconds
            ),
        )
    else:
        report = run_against(
            args.url, args.avatar, lambda url, _pid: measure(url, args.seconds, args.codec)
        )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
