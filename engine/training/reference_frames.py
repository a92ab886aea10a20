"""Pick an avatar's reference frames from its capture and keep them in its file.

    python -m engine reference --avatar A.pt --data DIR

Training pairs for int8 calibration (CALIBRATION_PAIRS, spread over the training rows, distances
cycling over the default schedule's served ones) and held-out pairs for the quality gate
(HELD_OUT_PAIRS from the test blocks, same distances, with their true crops): see
engine/render/backends/reference.py. `engine train` attaches them to every avatar it writes; this
command attaches them to an avatar trained before that (the file is rewritten atomically, its
weights untouched).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from engine.capture.store import load_capture
from engine.pipeline.schedule import DEFAULT_SCHEDULE
from engine.render.avatar import Avatar
from engine.render.backends.reference import ReferenceFrames
from engine.training.dataset import CaptureFrames
from engine.training.split import Split, pair_starts

CALIBRATION_PAIRS = 32
HELD_OUT_PAIRS = 12


def _pairs(rows: np.ndarray, count: int, distances: tuple[int, ...]) -> list[tuple[int, int]]:
    """Up to `count` (t, t + k) with both in `rows`, t spread evenly, k cycling over distances."""
    starts = pair_starts(rows, max(distances))
    if len(starts) == 0:
        return []
    picks = starts[np.linspace(0, len(starts) - 1, min(count, len(starts))).round().astype(int)]
    return [(int(t), int(t) + distances[i % len(distances)]) for i, t in enumerate(picks)]


def build_reference(frames: CaptureFrames, split: Split) -> ReferenceFrames:
    """The reference frames of a capture under `split` (calibration from train, gate from test)."""
    distances = DEFAULT_SCHEDULE.distances()
    calibration = _pairs(split.train, CALIBRATION_PAIRS, distances)
    held_out = _pairs(split.test, HELD_OUT_PAIRS, distances)
    if not calibration or not held_out:
        # A short capture: fall back to the shortest served distance, then to any distance.
        short = tuple(range(1, max(distances) + 1))
        for k in (short[:1], short):
            calibration = calibration or _pairs(split.train, CALIBRATION_PAIRS, k)
            held_out = held_out or _pairs(split.test, HELD_OUT_PAIRS, k)
    if not calibration or not held_out:
        raise ValueError("the capture has no run of consecutive training and test frames to keep")
    rows = sorted({r for pair in calibration + held_out for r in pair})
    index = {r: i for i, r in enumerate(rows)}
    t = torch.as_tensor(rows)
    truth_rows = sorted({r for pair in held_out for r in pair})
    crops = frames.uint8(torch.as_tensor(truth_rows))
    return ReferenceFrames(
        expression=frames.expression[t].float(),
        rotation=frames.rotation[t].float(),
        translation=frames.translation[t].float(),
        angles=frames.angles[t].float(),
        calibration=torch.tensor([[index[a], index[b]] for a, b in calibration]),
        held_out=torch.tensor([[index[a], index[b]] for a, b in held_out]),
        truth={index[r]: crops[i] for i, r in enumerate(truth_rows)},
        split_digest=split.digest(),
    )


def attach(avatar_path: Path, data: Path) -> ReferenceFrames:
    """Add reference frames from capture `data` to the avatar file (its recorded split checked)."""
    from engine.training.evaluate import check_split, split_of

    avatar = Avatar.load(avatar_path)
    capture = load_capture(data)
    split = split_of(avatar, capture.time_s)
    check_split(avatar, split, data)
    frames = CaptureFrames(capture, avatar.head, avatar.resolution, preload=False)
    avatar.reference = build_reference(frames, split)
    avatar.save(avatar_path)
    return avatar.reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--avatar", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the capture it was trained on")
    args = parser.parse_args(argv)
    try:
        ref = attach(args.avatar, args.data)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.avatar}: {len(ref.calibration)} calibration pairs, {len(ref.held_out)} held-out "
        f"pairs ({len(ref.truth)} true crops), split {ref.split_digest}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
