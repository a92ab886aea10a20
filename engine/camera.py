"""Pinhole camera: world points -> pixel coordinates and depth.

Conventions used across the engine:
- World frame: MediaPipe's metric face-geometry frame, in the head model's units (cm for the
  default head): x right, y up, the camera looks down -z. A captured head pose maps the canonical
  mesh into this frame.
- Camera frame: OpenCV's (x right, y down, z forward, depth > 0), reached by `rotation` and
  `translation` (world -> camera). For a captured avatar that is diag(1, -1, -1) and zero.
- Pixels: x to the right, y down, the centre of pixel (row i, column j) at (j + 0.5, i + 0.5), so
  a pixel coordinate p maps to grid_sample's align_corners=False coordinate 2 * p / size - 1.
- Intrinsics are normalised by the image size (fx_px = fx * width), so one camera serves every
  resolution of the same square crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

GL_TO_CV = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))
MIN_DEPTH = 1e-6  # points at or behind the camera plane are clamped here, not divided by zero


@dataclass(frozen=True)
class Camera:
    """fx, fy: focal lengths in units of image width / height; cx, cy: principal point in the same
    units (0.5 = centre); rotation: 3x3 world -> camera rows; translation: (3,) in model units."""

    fx: float
    fy: float
    cx: float = 0.5
    cy: float = 0.5
    rotation: tuple[tuple[float, float, float], ...] = GL_TO_CV
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy, *self.translation)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"camera needs finite values and positive focal lengths, got {self}")
        if len(self.rotation) != 3 or any(len(row) != 3 for row in self.rotation):
            raise ValueError("camera rotation must be 3x3")

    def to_dict(self) -> dict[str, object]:
        return {
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "rotation": [list(r) for r in self.rotation],
            "translation": list(self.translation),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Camera:
        """Inverse of to_dict; raises ValueError naming what is wrong."""
        try:
            rot = [[float(x) for x in row] for row in d.get("rotation", GL_TO_CV)]
            trans = [float(x) for x in d.get("translation", (0.0, 0.0, 0.0))]
            if len(rot) != 3 or any(len(r) != 3 for r in rot) or len(trans) != 3:
                raise ValueError("rotation must be 3x3 and translation 3 values")
            return Camera(
                fx=float(d["fx"]),
                fy=float(d["fy"]),
                cx=float(d.get("cx", 0.5)),
                cy=float(d.get("cy", 0.5)),
                rotation=(
                    (rot[0][0], rot[0][1], rot[0][2]),
                    (rot[1][0], rot[1][1], rot[1][2]),
                    (rot[2][0], rot[2][1], rot[2][2]),
                ),
                translation=(trans[0], trans[1], trans[2]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a camera description: {exc}") from exc


def world_to_camera(verts: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(..., 3) world points -> (..., 3) OpenCV camera-frame points."""
    rot = torch.tensor(camera.rotation, dtype=verts.dtype, device=verts.device)
    trans = torch.tensor(camera.translation, dtype=verts.dtype, device=verts.device)
    return verts @ rot.T + trans


def project(verts: torch.Tensor, camera: Camera, height: int, width: int) -> torch.Tensor:
    """(..., 3) world points -> (..., 3) screen points: x and y in pixels, z = camera depth."""
    cam = world_to_camera(verts, camera)
    z = cam[..., 2].clamp_min(MIN_DEPTH)
    x = camera.fx * width * cam[..., 0] / z + camera.cx * width
    y = camera.fy * height * cam[..., 1] / z + camera.cy * height
    return torch.stack((x, y, cam[..., 2]), dim=-1)
