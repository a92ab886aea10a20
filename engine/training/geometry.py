"""How well a head model's meshes, made from the captured scores as serving makes them, match the
tracked landmarks of the frames they claim to be.

    python -m engine.training.geometry --data DIR --basis A.npz [B.npz ...] [--json OUT]

For each expression basis (the default head built on it) and for the capture's validation and test
frames (engine/training/split.py): the mesh from each frame's scores, pose and crop translation
against the 468 tracked landmarks in the same place, after a per-frame similarity alignment (so
that what is left is shape: expression and identity, not placement), mean per vertex in cm over
the inner face (outline left out: its landmarks slide along the silhouette) and over the mouth and
jaw; and the mean similarity scale (1 = the mesh has the landmarks' size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.capture.store import load_capture
from engine.head.canonical_mesh import load_canonical_mesh
from engine.head.default import build_default_head
from engine.head.model import HeadControls, HeadModel
from engine.head.procrustes import fit_similarity
from engine.head.regions import report_regions
from engine.training.dataset import CaptureFrames
from engine.training.split import interleaved_split


@torch.inference_mode()
def mesh_error(head: HeadModel, frames: CaptureFrames, rows: np.ndarray) -> dict[str, float]:
    regions = report_regions(load_canonical_mesh().vertices)
    inner = ~regions["outline"]
    index = torch.as_tensor(rows)
    zeros = torch.zeros(len(rows), 3)
    controls = HeadControls(
        expression=frames.expression[index],
        rotation=frames.rotation[index],
        translation=frames.translation[index],
        jaw=zeros,
        neck=zeros.clone(),
    )
    mesh = head(controls).vertices.double().numpy()[:, inner]
    seen = frames.landmark_vertices[index].double().numpy()[:, inner]
    fit = fit_similarity(mesh, seen)  # shape left over, not placement
    moved, scale = fit.apply(mesh), fit.scale
    err = np.linalg.norm(moved - seen, axis=-1)  # (N, V')
    return {
        "inner_cm": round(float(err.mean()), 4),
        "mouth_jaw_cm": round(float(err[:, regions["mouth_jaw"][inner]].mean()), 4),
        "scale": round(float(scale.mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.training.geometry", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="a capture directory")
    parser.add_argument("--basis", type=Path, nargs="+", required=True, help="basis files")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        capture = load_capture(args.data)
        split = interleaved_split(capture.time_s)
        report: list[dict[str, Any]] = []
        for path in args.basis:
            head = HeadModel(build_default_head(path))
            frames = CaptureFrames(capture, head, capture.resolution, preload=False)
            for part in ("validation", "test"):
                rows = getattr(split, part)
                report.append(
                    {"basis": str(path), "frames": part, **mesh_error(head, frames, rows)}
                )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    for r in report:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
