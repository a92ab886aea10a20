"""Measure an avatar's expression response and store it in its file (engine/render/response.py).

    python -m engine response --avatar A.pt [--out B.pt]

For each channel asked for (`--channels`, default the blink) the avatar is rendered at its rest
with that channel's weights at 0, 0.1, ..., 1 and each still read back by MediaPipe Face
Landmarker (the tracker a webcam page runs); the weights and the scores read are the channel's
curve. The curves are made from the avatar's own renders only, no clip of anyone. A channel whose
read-back does not rise is left out (its scores are then drawn as sent), and said so.

Why the blink alone by default: it is the channel the avatar under-draws (flat below 0.4, steep
above), and its inverse spreads a webcam user's partial blinks out. Where the response is steep at
first (the smile: 0.1 -> 0.08, 0.2 -> 0.28 on the 635-minute avatar) the inverse squeezes the
scores into a narrow band of weights, where any difference between the measured still (at rest,
straight ahead) and a reenacted frame counts many times over: reenacting another man's webcam
clip with all three channels mapped, the smile's correlation fell from 0.90 to 0.49, while the
blink's rose from 0.90 to 0.97 (README, the shipped avatar's read-back).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.controls import update
from engine.render.avatar import Avatar, summary_as
from engine.render.response import CHANNELS, Curve, Response
from engine.training.readback import Reader
from engine.training.reenact import readback

WEIGHTS = tuple(float(w) for w in np.linspace(0.0, 1.0, 11).round(3))  # weights measured at
DEFAULT_CHANNELS = ("blink",)
STRIP_SCORES = (0.0, 0.15, 0.3, 0.45, 0.6, 1.0)  # scores sent in the --strip picture


def drawn_with(avatar: Avatar, response: Response | None) -> AbstractContextManager[None]:
    """Within the block the avatar draws through `response` (None: scores as sent), whatever its
    file holds; after it, through its own again."""
    return summary_as(avatar, "response", None if response is None else response.to_dict())


@torch.inference_mode()
def measure_response(
    avatar: Avatar, reader: Reader, channels: tuple[str, ...] = DEFAULT_CHANNELS
) -> tuple[Response, dict[str, str]]:
    """The avatar's curves of `channels`, measured with scores drawn as sent (any response in
    its file is set aside while measuring), and why any channel was left out."""
    curves, skipped = [], {}
    names = avatar.expression_names
    with drawn_with(avatar, None):
        rest = avatar.rest
        for channel in channels:
            members = CHANNELS[channel]
            if not set(members) <= set(names):
                skipped[channel] = "the avatar has no such expression"
                continue
            weights, scores = [], []
            for w in WEIGHTS:
                reading = reader.read(
                    avatar.render(update(rest, names, expression={n: w for n in members}))
                )
                if reading.found:
                    weights.append(float(w))
                    scores.append(reading.channel(channel))
            try:
                curves.append(Curve.measured(channel, weights, scores))
            except ValueError as exc:
                skipped[channel] = str(exc)
    return Response(tuple(curves)), skipped


def compare(
    avatar: Avatar, responses: dict[str, Response], sources: list[str]
) -> list[dict[str, Any]]:
    """The read-back (rises, rest, reenactment from `sources`) of `avatar` drawn as sent and
    through each of `responses`: one row each, named."""
    rows = []
    for name, response in {"as sent": None, **responses}.items():
        with drawn_with(avatar, response):
            report = readback(avatar, sources, None)
        rows.append(
            {
                "response": name,
                "channels": [c.channel for c in response.curves] if response else [],
                "rise": report["rise"],
                "rest": report["rest"],
                "reenact": {r["source"]: r["corr"] for r in report.get("reenact", [])},
            }
        )
    return rows


@torch.inference_mode()
def strip(avatar: Avatar, response: Response, out: Path) -> None:
    """A PNG: for each of the response's channels, the avatar with it sent at STRIP_SCORES, a
    row drawn as sent above a row drawn through the channel's curve."""
    names = avatar.expression_names
    rows = []
    for curve in response.curves:
        members = CHANNELS[curve.channel]
        for through in (None, Response((curve,))):
            with drawn_with(avatar, through):
                rest = avatar.rest
                pictures = [
                    avatar.render(update(rest, names, {n: score for n in members}))
                    for score in STRIP_SCORES
                ]
            rows.append(np.concatenate(pictures, axis=1))
    if rows:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine response", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--avatar", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, default=None, help="write the avatar here (default: over --avatar)"
    )
    parser.add_argument(
        "--channels",
        nargs="+",
        choices=sorted(CHANNELS),
        default=list(DEFAULT_CHANNELS),
        help="the channels whose response is measured and served (default: the blink; the "
        "module's docstring says why)",
    )
    parser.add_argument(
        "--strip",
        type=Path,
        default=None,
        help=f"PNG: each channel sent at {', '.join(map(str, STRIP_SCORES))}, drawn as sent "
        "(upper row) and through its curve (lower row)",
    )
    parser.add_argument(
        "--reenact",
        nargs="+",
        default=[],
        help="also read back the avatar reenacted from these clips (sample names or paths) drawn "
        "as sent, through the measured curves, and through all three channels' curves (--json)",
    )
    parser.add_argument("--json", type=Path, default=None, help="the --reenact comparison")
    args = parser.parse_args(argv)
    if bool(args.reenact) != (args.json is not None):
        parser.error("--reenact and --json go together")
    try:
        avatar = Avatar.load(args.avatar)
        served = Avatar.load(args.avatar).prepare_for_inference()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with Reader() as reader:
        response, skipped = measure_response(served, reader, tuple(args.channels))
    for channel, why in skipped.items():
        print(f"{channel}: left out ({why})", file=sys.stderr)
    for curve in response.curves:
        knots = ", ".join(f"{w:g}->{s:.3f}" for w, s in zip(curve.weight, curve.score, strict=True))
        print(f"{curve.channel}: {knots}")
    if args.strip is not None:
        strip(served, response, args.strip)
    if args.reenact:
        with Reader() as reader:
            everything, _ = measure_response(served, reader, tuple(CHANNELS))
        compared = compare(served, {"measured": response, "all channels": everything}, args.reenact)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(compared, indent=1) + "\n")
    avatar.summary["response"] = response.to_dict()
    avatar.save(args.out or args.avatar)  # atomic: a failed write leaves the old file
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
