"""Framing: a square crop per frame that follows the head smoothly, and the one camera of all crops.

The crop's centre is the landmarks' bounding-box centre and its side is chosen so that the face
mesh's silhouette (MediaPipe's FACE_OVAL polygon) covers `coverage` of the square; both are
smoothed over time (Gaussian, in seconds) so that the crops do not jitter with the landmarks, and
the square is then shifted (never padded) to lie inside the frame, shrunk only when the frame
itself is smaller than it. Boxes are real-valued: the crops are resampled with sub-pixel offsets.

Every crop is rendered by one camera (the median box's: `reference_camera`), with the head moved
per frame instead (`crop_translations`): the translation that, under that camera, puts each
landmark where it is in that frame's crop. A crop is a shift and scale of the image, which a change
of the head's depth and offset reproduces up to the perspective of the face's own relief, so the
avatar keeps one camera and the training frames stay framed alike.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from engine.camera import Camera
from engine.capture.geometry import focal_length_px
from engine.head.regions import FACE_OVAL

DEFAULT_COVERAGE = 0.45  # share of the crop inside the face mesh's silhouette (the issue: >= 0.4)
CENTRE_SMOOTH_S = 0.15  # Gaussian sigma of the crop centre's path, seconds
SIDE_SMOOTH_S = 1.0  # Gaussian sigma of the crop side, seconds: zooming is more distracting
MIN_COVERAGE, MAX_COVERAGE = 0.05, 0.9


def silhouette_area(points_px: np.ndarray) -> np.ndarray:
    """(N, L, 2) landmarks in pixels -> (N,) area of the FACE_OVAL polygon (shoelace), pixels^2."""
    oval = points_px[:, list(FACE_OVAL)]  # (N, 36, 2)
    x, y = oval[..., 0], oval[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(1))


def follow_crops(
    points_px: np.ndarray,
    width: int,
    height: int,
    fps: float,
    coverage: float = DEFAULT_COVERAGE,
) -> np.ndarray:
    """(N, L, 2) landmarks in source pixels, frames in time order -> (N, 3) float64 boxes
    (x0, y0, side) in source pixels, each inside the frame."""
    if not MIN_COVERAGE <= coverage <= MAX_COVERAGE:
        raise ValueError(f"bad coverage {coverage}: must be {MIN_COVERAGE}..{MAX_COVERAGE}")
    lo, hi = points_px.min(1), points_px.max(1)  # (N, 2)
    centre = (lo + hi) / 2  # (N, 2)
    side = np.sqrt(silhouette_area(points_px) / coverage)  # (N,)
    if len(points_px) > 1:
        centre = gaussian_filter1d(centre, CENTRE_SMOOTH_S * fps, axis=0, mode="nearest")
        side = gaussian_filter1d(side, SIDE_SMOOTH_S * fps, mode="nearest")
    side = np.minimum(side, min(width, height))
    x0 = np.clip(centre[:, 0] - side / 2, 0.0, width - side)
    y0 = np.clip(centre[:, 1] - side / 2, 0.0, height - side)
    return np.stack((x0, y0, side), axis=1)


def crop_coverage(points_px: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) share of each box inside the face mesh's silhouette."""
    return silhouette_area(points_px) / boxes[:, 2] ** 2


def cut_crop(rgb: np.ndarray, box: np.ndarray, resolution: int) -> Image.Image:
    """(H, W, 3) uint8 frame -> the square `box` (x0, y0, side; inside the frame) resampled to
    resolution^2 with Lanczos (which low-passes when shrinking, so no aliasing)."""
    x0, y0, side = (float(v) for v in box)
    return Image.fromarray(rgb).resize(
        (resolution, resolution), Image.Resampling.LANCZOS, box=(x0, y0, x0 + side, y0 + side)
    )


def crop_camera(width: int, height: int, box: np.ndarray) -> Camera:
    """The camera of one crop: MediaPipe's source camera, shifted and scaled to the square."""
    x0, y0, side = (float(v) for v in box)
    f = focal_length_px(height) / side
    return Camera(fx=f, fy=f, cx=(width / 2 - x0) / side, cy=(height / 2 - y0) / side)


def reference_box(boxes: np.ndarray) -> np.ndarray:
    """(3,) the median box: its camera is the one every crop is rendered with."""
    return np.median(boxes, axis=0)


def to_crop_pixels(
    norm: np.ndarray, boxes: np.ndarray, width: int, height: int, resolution: int
) -> np.ndarray:
    """(N, L, 3) MediaPipe's normalised landmarks -> (N, L, 3) pixels of each frame's crop at
    `resolution`; z (relative depth, in units of the frame width) is scaled like x."""
    scale = resolution / boxes[:, 2]  # (N,)
    out = np.empty_like(norm)
    out[..., 0] = (norm[..., 0] * width - boxes[:, None, 0]) * scale[:, None]
    out[..., 1] = (norm[..., 1] * height - boxes[:, None, 1]) * scale[:, None]
    out[..., 2] = norm[..., 2] * width * scale[:, None]
    return out


def crop_translations(
    world: np.ndarray, translation: np.ndarray, crop_px: np.ndarray, resolution: int, camera: Camera
) -> np.ndarray:
    """(N, L, 3) world landmarks (cm), (N, 3) head translations, (N, L, 2) the landmarks in each
    crop's pixels -> (N, 3) translations that put the head there under `camera`.

    With Q = landmark - translation and the unknown t, the pinhole u = fx X / (-Z) + cx,
    v = fy Y / Z + cy (engine/camera.py's GL -> CV) is linear in t once multiplied by the depth:
        -fx tx - (u - cx) tz = fx Qx + (u - cx) Qz
        -fy ty + (v - cy) tz = fy Qy - (v - cy) Qz
    solved by least squares per frame. It returns `translation` itself when `camera` is the
    crop's own."""
    q = world.astype(np.float64) - translation[:, None, :].astype(np.float64)  # (N, L, 3)
    du = crop_px[..., 0].astype(np.float64) / resolution - camera.cx  # (N, L)
    dv = crop_px[..., 1].astype(np.float64) / resolution - camera.cy
    zeros = np.zeros_like(du)
    rows_u = np.stack((np.full_like(du, -camera.fx), zeros, -du), axis=-1)  # (N, L, 3)
    rows_v = np.stack((zeros, np.full_like(dv, -camera.fy), dv), axis=-1)
    rhs_u = camera.fx * q[..., 0] + du * q[..., 2]  # (N, L)
    rhs_v = camera.fy * q[..., 1] - dv * q[..., 2]
    a = np.concatenate((rows_u, rows_v), axis=1)  # (N, 2L, 3)
    b = np.concatenate((rhs_u, rhs_v), axis=1)  # (N, 2L)
    ata = np.einsum("nli,nlj->nij", a, a)  # (N, 3, 3)
    atb = np.einsum("nli,nl->ni", a, b)  # (N, 3)
    return np.linalg.solve(ata, atb[..., None])[..., 0]
