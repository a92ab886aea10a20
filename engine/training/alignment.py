"""Tracked landmarks brought into the canonical frame, where the expression basis is fitted
(engine.training.basis): weighted similarity fits on the skull's rigid points, so that mouth, eyes
and brows never pull the pose."""

from __future__ import annotations

import numpy as np

from engine.head.canonical_mesh import CanonicalMesh
from engine.head.default import jaw_weights
from engine.head.procrustes import fit_similarity


def skull_weights(mesh: CanonicalMesh) -> np.ndarray:
    """(V,) alignment weights: MediaPipe's rigid landmarks, less those the jaw carries (its set
    includes four jaw-line points, which drop when the mouth opens)."""
    return mesh.procrustes_weights.astype(np.float64) * (1.0 - jaw_weights(mesh.vertices))


def flat_points(landmarks_px: np.ndarray) -> np.ndarray:
    """(N, L, 3) crop-pixel landmarks -> the same points with y and depth pointing up and towards
    the viewer, as the canonical mesh has them (a weak-perspective reading of MediaPipe's output)."""
    return np.stack((landmarks_px[..., 0], -landmarks_px[..., 1], -landmarks_px[..., 2]), axis=-1)


ALIGNMENTS = ("rigid-points", "perspective")


def align(
    alignment: str,
    landmarks_px: np.ndarray,
    landmarks_world: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    template: np.ndarray,
    rigid_weights: np.ndarray,
) -> np.ndarray:
    """Observed landmarks -> canonical-frame points (N, L, 3).

    rigid-points: a similarity Procrustes of the weak-perspective points (`flat_points` of the
    (N, L, 3) crop-pixel landmarks) on the skull-rigid landmarks (`skull_weights`), so mouth, eyes
    and brows never pull the pose. perspective: MediaPipe's own metric landmarks (N, L, 3), lifted
    under its 63-degree perspective camera, brought back by the inverse of its head pose, then a
    rigid Procrustes on the same points. On the sample clip the first has the lower held-out error
    (the report compares both): the clip was filmed from further away than that camera assumes.
    """
    if alignment == "rigid-points":
        points = flat_points(landmarks_px)
        return fit_similarity(points, template, rigid_weights).apply(points)
    if alignment == "perspective":
        canonical = np.einsum("nji,nlj->nli", rotation, landmarks_world - translation[:, None, :])
        return fit_similarity(canonical, template, rigid_weights, scale=False).apply(canonical)
    raise ValueError(f"unknown alignment {alignment!r}: expected one of {ALIGNMENTS}")
