"""MediaPipe's face geometry as pure functions: its camera, its metric landmarks and head poses.

Conventions (engine/camera.py): world = MediaPipe's metric frame, x right, y up, camera at the
origin looking down -z, cm. Face Landmarker's geometry pipeline solves the pose under a perspective
camera with a 63 degree vertical field of view over the source frame, principal point at the frame
centre, square pixels: f_px = (H / 2) / tan(31.5 deg). Re-running that pipeline here with this
camera reproduces MediaPipe's matrices (to ~2e-5 on the sample clip).
"""

from __future__ import annotations

import math

import numpy as np

from engine.head.canonical_mesh import NUM_VERTICES, load_canonical_mesh
from engine.head.procrustes import fit_similarity

VERTICAL_FOV_DEG = 63.0  # Face Landmarker geometry pipeline's perspective camera, over frame height
NEAR_PLANE = 1.0  # that camera's near plane: sets the depth of its first pose iteration
NUM_LANDMARKS = 478  # 468 mesh landmarks + 10 iris points


def focal_length_px(height: int) -> float:
    """Face Landmarker's focal length in source pixels for a frame `height` pixels tall."""
    return (height / 2) / math.tan(math.radians(VERTICAL_FOV_DEG) / 2)


def metric_landmarks(norm: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 478, 3) normalised landmarks -> ((N, 478, 3) world landmarks in cm, (N, 4, 4) poses).

    MediaPipe's geometry_pipeline.cc step by step: put the landmarks on the near plane of the
    camera's frustum, estimate the canonical-to-face scale twice (first without, then with
    perspective), place each landmark at depth near / scale, and fit the canonical mesh by
    weighted Procrustes. Only the 468 mesh landmarks steer it; the iris points ride along."""
    mesh = load_canonical_mesh()
    canon = mesh.vertices.astype(np.float64)
    weights = mesh.procrustes_weights.astype(np.float64)
    h_near = 2 * NEAR_PLANE * math.tan(math.radians(VERTICAL_FOV_DEG) / 2)
    w_near = h_near * width / height
    screen = norm.astype(np.float64).copy()  # (N, L, 3)
    screen[..., 0] = (screen[..., 0] - 0.5) * w_near
    screen[..., 1] = (0.5 - screen[..., 1]) * h_near  # y up
    screen[..., 2] *= w_near  # MediaPipe's z shares x's scale
    depth_offset = screen[:, :NUM_VERTICES, 2].mean(1, keepdims=True)  # (N, 1)

    def lift(scale: np.ndarray | None) -> np.ndarray:
        pts = screen.copy()
        if scale is not None:
            pts[..., 2] = (pts[..., 2] - depth_offset + NEAR_PLANE) / scale[:, None]
            pts[..., :2] *= pts[..., 2:] / NEAR_PLANE
        pts[..., 2] *= -1  # the camera looks down -z
        return pts

    def scale_of(pts: np.ndarray) -> np.ndarray:
        return fit_similarity(canon, pts[:, :NUM_VERTICES], weights).scale  # (N,)

    first = scale_of(lift(None))  # flat: z is only relative, so no perspective yet
    total = first * scale_of(lift(first))
    world = lift(total)
    pose = fit_similarity(canon, world[:, :NUM_VERTICES], weights).matrix()
    return world, pose


def nearest_rotation(mats: np.ndarray) -> np.ndarray:
    """(N, 3, 3) near-rotations -> the closest proper rotations (SVD)."""
    u, _, vt = np.linalg.svd(mats)
    flip = np.linalg.det(u @ vt) < 0
    u[flip, :, 2] *= -1
    return u @ vt
