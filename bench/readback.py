"""Read-back of a served avatar by an independent tracker (engine/training/readback.py).

    python -m bench.readback [--url URL] [--avatar A] [--source CLIP ...] [--reference CLIP]
        --json OUT

Stills come through the server's public `GET /still.png?state=JSON`; the avatar's expression
names and offered pose range through `GET /api/avatar`. `--source` names clips of other people
whose tracked controls are sent as states (`pexels`, `cap12`, `cap13`: sample clips by name,
fetched by their packages, or video paths); `--reference` is the clip the avatar was learned
from, for the sharpness ratio.
Without --url a server is started on a free loopback port and stopped afterwards.
"""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.local_server import run_against, server_parser, write_report
from engine.capture.sample import SampleUnavailableError, sample_or_path
from engine.cpu import cpu_info
from engine.training.readback import State, measure, track_clip

HTTP_TIMEOUT_S = 60.0


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
        result: dict[str, Any] = json.load(r)
        return result


def still(url: str, state: State) -> np.ndarray:
    """GET /still.png for `state` -> (H, W, 3) uint8."""
    query = urllib.parse.urlencode({"state": json.dumps(state)})
    with urllib.request.urlopen(f"{url}/still.png?{query}", timeout=HTTP_TIMEOUT_S) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def run(url: str, sources: dict[str, Path], reference: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    info = get_json(f"{url}/api/avatar")
    tracked = [track_clip(path, name=name) for name, path in sources.items()]
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
        "sources": {name: str(path) for name, path in sources.items()},
        "reference": str(reference) if reference else None,
        "avatar_source": info.get("source"),
        "seconds": round(time.perf_counter() - started, 1),
        "url": url,
        "cpu": cpu_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.readback", __doc__ or "")
    parser.add_argument(
        "--source",
        nargs="*",
        default=[],
        help="clips of other people to reenact: sample names or video paths",
    )
    parser.add_argument("--reference", help="the avatar's own clip: a video path or a sample name")
    args = parser.parse_args(argv)
    try:
        sources = {name: sample_or_path(name) for name in args.source}
        reference = sample_or_path(args.reference) if args.reference else None
    except (FileNotFoundError, SampleUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_against(args.url, args.avatar, lambda url, _pid: run(url, sources, reference))
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
