"""Read-back of a served avatar by an independent tracker (engine/training/readback.py).

    python -m bench.readback [--url URL] [--avatar A] [--source CLIP] [--reference CLIP] --json OUT

Stills come through the server's public `GET /still.png?state=JSON`; the avatar's expression
names and offered pose range through `GET /api/avatar`. `--source` is a clip of another person
whose tracked controls are sent as states (`pexels` or `franck`: a sample clip by name, fetched
by its package); `--reference` is the clip the avatar was learned from, for the sharpness ratio.
Without --url a server is started on a free loopback port and stopped afterwards.
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.local_server import run_against, server_parser, write_report
from engine.capture.sample import SAMPLES, fetch_sample_video
from engine.cpu import cpu_info
from engine.training.readback import State, measure, track_clip

HTTP_TIMEOUT_S = 60.0


def clip_path(value: str | None) -> Path | None:
    """A sample's name (fetched and cached) or a path to a video."""
    if value is None:
        return None
    return fetch_sample_video(value) if value in SAMPLES else Path(value)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
        result: dict[str, Any] = json.load(r)
        return result


def still(url: str, state: State) -> np.ndarray:
    """GET /still.png for `state` -> (H, W, 3) uint8."""
    query = urllib.parse.urlencode({"state": json.dumps(state)})
    with urllib.request.urlopen(f"{url}/still.png?{query}", timeout=HTTP_TIMEOUT_S) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def run(url: str, source: Path | None, reference: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    info = get_json(f"{url}/api/avatar")
    tracked = track_clip(source) if source is not None else None
    report = measure(
        lambda state: still(url, state),
        info["expression_names"],
        info["pose_limits_deg"],
        info["accepted_pose_deg"],
        tracked,
        reference,
    )
    return {
        **report,
        "source": str(source) if source else None,
        "reference": str(reference) if reference else None,
        "avatar_source": info.get("source"),
        "seconds": round(time.perf_counter() - started, 1),
        "url": url,
        "cpu": cpu_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.readback", __doc__ or "")
    parser.add_argument("--source", help="a clip of another person: a video path or a sample name")
    parser.add_argument("--reference", help="the avatar's own clip: a video path or a sample name")
    args = parser.parse_args(argv)
    source, reference = clip_path(args.source), clip_path(args.reference)
    report = run_against(args.url, args.avatar, lambda url, _pid: run(url, source, reference))
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
