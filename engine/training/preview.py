"""Check that UV maps rasterised from the fitted model line up with the captured crops.

    python -m engine preview --capture DIR --out PNG [--frames 6] [--device auto]

For evenly spaced captured frames: the frame's controls alone (blendshape scores and head pose) go
through the default head, the crop's camera and the rasteriser, exactly as training will make its
inputs; the picture shows each crop, and the crop with the UV map blended over it (u in red, v in
green). It prints the median distance in crop pixels between the model's projected vertices and the
detected landmarks, for the fitted head and for the bare canonical mesh.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.camera import project
from engine.capture.store import CaptureData, load_capture
from engine.controls import head_controls_from_capture
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.default import build_default_head
from engine.head.model import HeadModel
from engine.render.raster import UVMap, uv_map

OVERLAY_ALPHA = 0.45  # weight of the UV colours over the crop


def landmark_error_px(head: HeadModel, data: CaptureData, device: torch.device) -> float:
    """Median distance (crop px) between projected model vertices and detected landmarks."""
    res = data.resolution
    with torch.inference_mode():
        c = head_controls_from_capture(
            data.blendshapes, data.blendshape_names, data.rotation, data.crop_translation, head
        )
        screen = project(head(c).vertices, data.camera, res, res).cpu().numpy()  # (N, 468, 3)
    seen = data.landmarks_px[:, : screen.shape[1], :2]
    return float(np.median(np.linalg.norm(screen[..., :2] - seen, axis=-1)))


def uv_maps(head: HeadModel, data: CaptureData, rows: np.ndarray) -> UVMap:
    res = data.resolution
    with torch.inference_mode():
        c = head_controls_from_capture(
            data.blendshapes[rows],
            data.blendshape_names,
            data.rotation[rows],
            data.crop_translation[rows],
            head,
        )
        screen = project(head(c).vertices, data.camera, res, res)
        uv, _ = uv_map(screen, head.faces, head.face_uvs, res, res)
    return uv


def overlay(crop: np.ndarray, uv: UVMap, b: int) -> np.ndarray:
    """(R, R, 3) uint8 crop with the UV map of batch item b blended where the mesh covers it."""
    colours = np.zeros_like(crop, dtype=np.float32)
    colours[..., :2] = uv.uv[b].cpu().numpy() * 255.0
    mask = uv.mask[b].cpu().numpy()[..., None]
    mixed = np.where(mask, (1 - OVERLAY_ALPHA) * crop + OVERLAY_ALPHA * colours, crop)
    return mixed.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine preview", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--capture", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    args = parser.parse_args(argv)
    try:
        if args.frames < 1:
            raise ValueError("--frames must be at least 1")
        device = resolve_device(args.device)
        data = load_capture(args.capture)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    head = HeadModel(build_default_head()).to(device)
    bare = HeadModel(build_default_head(basis_path=None)).to(device)
    rows = (
        np.linspace(0, len(data.frame_index) - 1, min(args.frames, len(data.frame_index)))
        .round()
        .astype(int)
    )
    uv = uv_maps(head, data, rows)
    crops = [np.asarray(Image.open(data.frame_paths[r]).convert("RGB")) for r in rows]
    top = np.concatenate(crops, axis=1)
    bottom = np.concatenate([overlay(c, uv, b) for b, c in enumerate(crops)], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([top, bottom], axis=0)).save(args.out)
    report = {
        "frames_shown": [int(data.frame_index[r]) for r in rows],
        "landmark_error_px_fitted_head": round(landmark_error_px(head, data, device), 3),
        "landmark_error_px_canonical_mesh": round(landmark_error_px(bare, data, device), 3),
        "resolution": data.resolution,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
