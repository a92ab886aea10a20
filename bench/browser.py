"""Motion-to-photon latency and playback quality measured in a real headless Chromium.

    python -m bench.browser [--url URL] [--seconds S] [--codec vp8|h264] [--camera CLIP]
                            [--floor] [--sessions N] [--stills N] [--budget-plot PNG] --json OUT

Without --url it starts a server of its own (`run.py --loopback-only` on a free port, the shipped
avatar unless --avatar) and stops it afterwards. Chromium is Debian's (`/usr/bin/chromium`, driven by
Playwright with `executable_path`; no browser is downloaded), with flags that keep all traffic on
this machine. The page's own latency test runs: the head sweeps at 30 Hz, every displayed frame's
stamped seq is read in requestVideoFrameCallback, and motion-to-photon = display time - send time.
JSON keys: DESIGN.md, "Measurement contracts". The report also names the backend the server chose;
`--budget` adds `budget_ms`: the p50 of every stage from control sent to picture displayed (server
stages from server/budget.py, network, jitter buffer, decode, display). `--floor` runs the same test on a
synthetic pattern through the same path (server/floor.py) in the same run; `--sessions N` drives N
pages at once; `--budget-plot` draws the stacked budget; `--stills N` runs the test again while N
clients ask for stills at once (bench/stills_flood.py), with the server's memory before and after.

With --camera CLIP the page is driven by a face instead: Chromium's webcam plays CLIP (a Y4M made
from it, bench/fake_camera.py), the page tracks it and sends the controls, and the report adds
camera-to-avatar latency, tracking figures and how the sent controls follow an offline tracking
of the same clip (bench/camera.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.camera import offline_series, summarise
from bench.fake_camera import chromium_camera_flags, write_y4m
from bench.local_server import run_against, server_parser, write_report
from bench.stills_flood import StillsFlood, server_memory_mb
from engine.cpu import cpu_info

CHROMIUM = "/usr/bin/chromium"
SESSION_DRIVE_HZ = 30.0  # controls a second from each page in the --sessions run
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
    } | _served(result)


def _served(result: dict[str, Any]) -> dict[str, Any]:
    """The server's view of the session's recent frames: the share warped, how many frames back
    on average and how long back (mean, p95), and the share whose controls lay past the jump
    limit from their cache's."""
    server = result.get("server") or {}
    keys = ("warped", "warp_distance", "warp_age_ms", "warp_age_ms_p95", "beyond_jump_limit")
    return {k: server.get(k) for k in keys}


def _latency_tests(
    pages: list[Any], seconds: float, hz: float | None = None
) -> list[tuple[dict[str, Any], Any]]:
    """The latency test on every page at once (controls every animation frame, or at `hz`); each
    page's result and playback stats."""
    rate = "null" if hz is None else str(hz)
    for page in pages:  # started together, not awaited: the pages drive the server at once
        page.evaluate(
            f"() => {{ window.benchRun = window.avatarPage.latencyTest({seconds}, {rate}); }}"
        )
    out = []
    for page in pages:
        result = page.evaluate("() => window.benchRun")
        page.wait_for_timeout(200)
        out.append((result, page.evaluate("window.avatarStats")))
    return out


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "fps": round(result["fps"], 2),
        "mtp_ms_p50": result["p50"] and round(result["p50"], 2),
        "mtp_ms_p95": result["p95"] and round(result["p95"], 2),
        "budget_ms": result.get("budget_ms"),  # for the floor, its own stages
    } | _served(result)


def measure(
    url: str,
    seconds: float,
    codec: str,
    floor: bool = False,
    sessions: int = 1,
    budget: bool = False,
    stills: int = 0,
) -> dict[str, Any]:
    """The latency test on one page (and with `sessions` > 1 on that many pages at once), then with
    `floor` the synthetic pattern's, in the same browser against the same server."""
    with browser_page(url, f"/?codec={codec}") as page:
        wait_connected(page)
        page.wait_for_timeout(1500)  # the first stats
        backend = page.evaluate(
            "() => fetch('/api/avatar').then(r => r.json()).then(a => a.backend)"
        )
        [(result, stats)] = _latency_tests([page], seconds)
        report = _playback(url, seconds, result, stats)
        if budget:
            report["budget_ms"] = result.get("budget_ms")
            report["server_budget_ms"] = (result.get("server") or {}).get("budget_ms")
        report["backend"] = backend
        if sessions > 1:
            others = [page.context.browser.new_page() for _ in range(sessions - 1)]
            for other in others:
                other.goto(f"{url}/?codec={codec}")
                wait_connected(other)
            page.wait_for_timeout(2000)  # every session's first pictures
            # Each viewer drives at a camera's rate, as the capacity target counts them.
            runs = _latency_tests([page, *others], seconds, SESSION_DRIVE_HZ)
            report["sessions"] = [_summary(r) | {"drive_hz": SESSION_DRIVE_HZ} for r, _ in runs]
            for other in others:
                other.close()
            page.wait_for_timeout(1000)
        if stills:
            report["stills_flood"] = _with_stills(page, url, seconds, stills)
        if floor:
            page.goto(f"{url}/?codec={codec}&floor=1")
            wait_connected(page)
            page.wait_for_timeout(1500)
            [(floor_result, _)] = _latency_tests([page], seconds)
            report["floor"] = _summary(floor_result)
            if report["mtp_ms_p50"] is not None and floor_result["p50"] is not None:
                report["above_floor_ms_p50"] = round(report["mtp_ms_p50"] - floor_result["p50"], 2)
    return report


def plot_budget(report: dict[str, Any], out: Path) -> None:
    """Stacked bars of the p50 of every stage, the avatar's beside the floor's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = [("avatar", report.get("budget_ms"))]
    if report.get("floor"):
        found.append(("floor (no rendering)", report["floor"].get("budget_ms")))
    rows: list[tuple[str, dict[str, Any]]] = [(name, b) for name, b in found if b]
    if not rows:
        raise ValueError("no latency budget in the report (did the probe see frames?)")
    stages = list(rows[0][1])
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.8 * len(rows)))
    colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    for y, (_, budget) in enumerate(rows):
        left = 0.0
        for i, stage in enumerate(stages):
            value = max(0.0, float(budget.get(stage) or 0.0))
            ax.barh(
                y,
                value,
                left=left,
                color=colours[i % len(colours)],
                label=stage if y == 0 else None,
            )
            if value >= 4:
                ax.text(left + value / 2, y, f"{value:.0f}", ha="center", va="center", fontsize=8)
            left += value
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms, p50 of each stage: control sent -> picture displayed")
    ax.legend(ncol=2, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    cpu = report.get("cpu", {}).get("model", "")
    ax.set_title(f"latency budget, {report.get('codec')}, {cpu}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


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


def _with_stills(
    page: Any, url: str, seconds: float, concurrent: int, rounds: int = 2
) -> dict[str, Any]:
    """The latency test alone and while `concurrent` clients flood GET /still.png, in turn
    `rounds` times (this machine's latency drifts by tens of percent between minutes: pairs side
    by side say more than one of each); the server's memory before, during and after."""
    stats = "() => fetch('/api/stats').then(r => r.json())"
    # A few stills first: the still renderer's first renders allocate what it keeps (not growth).
    page.evaluate("async () => { for (let i = 0; i < 4; i++) await fetch('/still.png'); }")
    before = server_memory_mb(page.evaluate(stats))
    alone, flooded, floods = [], [], []
    for _ in range(rounds):
        [(result, _)] = _latency_tests([page], seconds)
        alone.append(_summary(result))
        with StillsFlood(url, concurrent) as flood:
            page.wait_for_timeout(2000)  # the flood at full strength before the test
            [(result, _)] = _latency_tests([page], seconds)
        flooded.append(_summary(result))
        floods.append(flood.report())
    page.wait_for_timeout(3000)
    after = server_memory_mb(page.evaluate(stats))
    p95_alone = statistics.median(r["mtp_ms_p95"] for r in alone)
    p95_flood = statistics.median(r["mtp_ms_p95"] for r in flooded)
    return {
        "concurrent": concurrent,
        "rounds": rounds,
        "alone": alone,
        "flooded": flooded,
        "floods": floods,
        "mtp_ms_p95_alone": round(p95_alone, 2),
        "mtp_ms_p95_flooded": round(p95_flood, 2),
        "p95_rise": round(p95_flood / p95_alone - 1.0, 3),
        "server_mb": {"before": before, "after": after},
    }


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.browser", __doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--codec", choices=("vp8", "h264"), default="vp8")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run a synthetic pattern (no rendering) through the same path: the floor",
    )
    parser.add_argument(
        "--sessions", type=int, default=1, help="also drive this many pages at once (> 1)"
    )
    parser.add_argument(
        "--stills",
        type=int,
        default=0,
        help="also run the test while this many clients ask for stills at once",
    )
    parser.add_argument(
        "--budget",
        action="store_true",
        help="add budget_ms: the p50 of every stage from control sent to picture displayed",
    )
    parser.add_argument(
        "--budget-plot", type=Path, default=None, help="with --budget: a PNG of the stacked budget"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an argument for the server this starts (run.py), e.g. --server-arg=--workers=1",
    )
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
    if not 1 <= args.sessions <= 8:
        parser.error("--sessions must be within 1..8")
    if args.budget_plot is not None and not args.budget:
        parser.error("--budget-plot draws the budget: give --budget too")
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
            args.server_arg,
        )
    else:
        report = run_against(
            args.url,
            args.avatar,
            lambda url, _pid: measure(
                url,
                args.seconds,
                args.codec,
                args.floor,
                args.sessions,
                args.budget,
                args.stills,
            ),
            args.server_arg,
        )
    write_report(args.json, report)
    if args.budget_plot is not None:
        plot_budget(report | {"cpu": report.get("cpu") or cpu_info()}, args.budget_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
