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

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    parser = server_parser("bench.browser", __doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--codec", choices=("vp8", "h264"), default="vp8")
    args = parser.parse_args(argv)
    if args.seconds < 2:
        parser.error("--seconds must be >= 2")
    if chromium_path() is None:
        print(
            "error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr
        )
        return 2
    report = run_against(
        args.url, args.avatar, lambda url, _pid: measure(url, args.seconds, args.codec)
    )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
