"""Which body a served frame should get: the generator on validation frames, at the training
median's framing (as served), with the body's numbers (engine/training/body.py) made five ways.

    python -m bench.served_body --avatar A.pt --data data/franck --json OUT

A served frame has no crop to read the shoulders from. Tried: 0 (the training median of each
number), the training frames' mean, a ridge fit to the control vector's five angles (what the
avatar serves), a ridge fit to the whole control vector (expressions too), and, as the bound no
served frame can reach, the frame's own numbers. Fits and statistics use training frames only;
the scores are on the validation frames `engine.training.compare` scores (never the test frames).

JSON: {"cpu", "avatar", "frames", "bodies": [{"name", "psnr", "face_psnr", "ssim", "l1"}]}.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.local_server import write_report
from engine.capture.store import load_capture
from engine.cpu import cpu_info
from engine.render.avatar import Avatar
from engine.render.frame_inputs import NUM_ANGLES, control_vector
from engine.training.body import BODY_DIM, fit_served
from engine.training.compare import DEFAULT_FRAMES, WARP_K
from engine.training.dataset import CaptureFrames
from engine.training.evaluate import capture_frames, generator_renderer, score, split_of
from engine.training.split import held_out_pairs


def ridge(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """y (N, K) fitted on x (N, F) at `rows` as the avatar's served body is (`fit_served`, any
    number of columns); the fit at every row."""
    weights, bias = fit_served(x, y, rows)
    out: np.ndarray = x @ np.asarray(weights).T + np.asarray(bias)
    return out


def with_body(frames: CaptureFrames, numbers: np.ndarray) -> CaptureFrames:
    """The frames at the training median's framing (and as filmed) with these body numbers."""
    assert frames.framing is not None
    out = copy.copy(frames)
    framing = torch.zeros_like(frames.framing)
    framing[:, -BODY_DIM:] = torch.from_numpy(numbers.astype(np.float32))
    out.framing = framing
    return out


@torch.inference_mode()
def measure(avatar_path: Path, data: Path, count: int) -> dict[str, Any]:
    avatar = Avatar.load(avatar_path).prepare_for_inference()
    if "body" not in avatar.summary:
        raise ValueError(f"{avatar_path} reads no body (trained without --body)")
    capture = load_capture(data)
    frames = capture_frames(avatar, capture)
    assert frames.framing is not None
    split = split_of(avatar, capture.time_s)
    own = frames.framing[:, -BODY_DIM:].numpy()
    controls = control_vector(frames.expression, frames.angles).numpy()
    train = split.train
    starts = held_out_pairs(split.validation, WARP_K)
    rows = starts[np.linspace(0, len(starts) - 1, min(count, len(starts))).round().astype(int)]
    rows = rows + WARP_K  # the frames compare scores the generator on
    bodies = {
        "0 (training median)": np.zeros_like(own),
        "training mean": np.tile(own[train].mean(0), (len(own), 1)),
        "ridge fit to the angles (served)": ridge(controls[:, -NUM_ANGLES:], own, train),
        "ridge fit to all controls": ridge(controls, own, train),
        "the frame's own (not servable)": own,
    }
    out = []
    for name, numbers in bodies.items():
        f = with_body(frames, numbers)
        out.append({"name": name, **score(f, rows, 0, generator_renderer(avatar, f))})
        print(out[-1], flush=True)
    # What the avatar itself serves, with no framing at all: must equal the angles' row.
    served = frames.at_median()
    out.append({"name": "as served", **score(served, rows, 0, generator_renderer(avatar, served))})
    return {
        "cpu": cpu_info(),
        "avatar": str(avatar_path),
        "frames": len(rows),
        "bodies": out,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avatar", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        report = measure(args.avatar, args.data, args.frames)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
