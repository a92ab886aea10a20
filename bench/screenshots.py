"""Screenshots of what a user sees: the page (at the avatar's rest, then a few controls) and the
/call demo, in headless Debian Chromium against a server.

    python -m bench.screenshots [--url URL] [--avatar A] --out DIR

Writes DIR/page.png (the whole page), DIR/call.png (the call demo) and DIR/page_controls.png (the
video alone at rest, jawOpen 1, smile, blink, yaw -15 and +20, side by side). Without --url a server
is started on a free loopback port and stopped afterwards.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.browser import browser_page, chromium_path, wait_connected
from bench.local_server import run_against

SETTLE_MS = 2500  # a control's pictures reach the page within this on a busy 2-core machine
# (label, expression, pose) set through the page's own sliders (window.avatarPage.set)
POSES: tuple[tuple[str, dict[str, float], dict[str, float]], ...] = (
    ("rest", {}, {}),
    ("jawOpen 1", {"jawOpen": 1.0}, {}),
    ("smile 1", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}, {}),
    ("blink 1", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, {}),
    ("yaw -15", {}, {"yaw": -15.0}),
    ("yaw +20", {}, {"yaw": 20.0}),
)


def video_picture(page: Any) -> np.ndarray:
    shot = page.locator("#video").screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))


def shoot(url: str, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    with browser_page(url) as page:
        page.set_viewport_size({"width": 1280, "height": 900})
        wait_connected(page)
        page.evaluate("document.getElementById('probe').click()")  # the picture without its code
        page.wait_for_timeout(SETTLE_MS)
        page.screenshot(path=str(out / "page.png"))
        page.evaluate("document.getElementById('overlay').hidden = true")
        pictures = []
        for _, expression, pose in POSES:
            page.evaluate(
                """([e, p]) => {
                  document.querySelector('[data-preset=rest]').click();
                  for (const axis of ['yaw', 'pitch', 'roll']) window.avatarPage.set('pose', axis, p[axis] ?? 0);
                  for (const [name, w] of Object.entries(e)) window.avatarPage.set('expression', name, w);
                  window.avatarPage.flush();
                }""",
                [expression, pose],
            )
            page.wait_for_timeout(SETTLE_MS)
            pictures.append(video_picture(page))
        height = min(p.shape[0] for p in pictures)
        strip = np.concatenate([p[:height] for p in pictures], axis=1)
        Image.fromarray(strip).save(out / "page_controls.png")
    with browser_page(url, "/call") as page:
        page.set_viewport_size({"width": 1280, "height": 720})
        page.wait_for_function(
            "() => document.getElementById('bob').readyState >= 2", timeout=60_000
        )
        page.wait_for_timeout(SETTLE_MS)
        page.screenshot(path=str(out / "call.png"))
    return {
        "page": str(out / "page.png"),
        "call": str(out / "call.png"),
        "controls": [label for label, _, _ in POSES],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.screenshots", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--avatar", type=Path, help="for the server this starts")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print(
            "error: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr
        )
        return 2
    print(run_against(args.url, args.avatar, lambda url, _pid: shoot(url, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
