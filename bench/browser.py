"""Motion-to-photon latency and playback quality measured in a real headless Chromium.

    python -m bench.browser [--url URL] [--seconds S] [--codec vp8|h264] --json OUT

Without --url it starts a server of its own (`run.py --loopback-only` on a free port, the shipped
avatar unless --avatar) and stops it afterwards. Chromium is Debian's (`/usr/bin/chromium`, driven by
Playwright with `executable_path`; no browser is downloaded), with flags that keep all traffic on
this machine. The page's own latency test runs: the head sweeps at 30 Hz, every displayed frame's
stamped seq is read in requestVideoFrameCallback, and motion-to-photon = display time - send time.
JSON keys: DESIGN.md, "Measurement contracts".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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
SERVER_START_S = 180.0  # workers load the avatar


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalServer:
    url: str
    pid: int


@contextlib.contextmanager
def local_server(avatar: Path | None, extra: list[str] | None = None) -> Iterator[LocalServer]:
    """`run.py` on a free loopback port; yields its URL and pid once /health answers."""
    port = free_port()
    cmd = [sys.executable, "run.py", "--port", str(port), "--loopback-only", *(extra or [])]
    if avatar is not None:
        cmd += ["--avatar", str(avatar)]
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.2)
        yield LocalServer(url, server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def browser_page(url: str, path: str = "/") -> Iterator[Any]:
    """A Playwright page of headless Debian chromium at url + path, once the avatar is connected."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
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


def measure(url: str, seconds: float, codec: str) -> dict[str, Any]:
    with browser_page(url, f"/?codec={codec}") as page:
        wait_connected(page)
        page.wait_for_timeout(1500)  # the first stats
        result = page.evaluate(f"window.avatarPage.latencyTest({seconds})", None)
        page.wait_for_timeout(1200)
        stats = page.evaluate("window.avatarStats")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.browser", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--avatar", type=Path, help="for the server this starts")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--codec", choices=("vp8", "h264"), default="vp8")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.seconds < 2:
        parser.error("--seconds must be >= 2")
    if chromium_path() is None:
        print(
            "error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr
        )
        return 2
    if args.url:
        report = measure(args.url.rstrip("/"), args.seconds, args.codec)
    else:
        with local_server(args.avatar) as server:
            report = measure(server.url, args.seconds, args.codec)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
