"""Weighted similarity Procrustes, batched over frames: the rotation, uniform scale and translation
that best move one point set onto another in the weighted least-squares sense (Umeyama's
solution, with reflections ruled out).

One solver for every alignment in the project: MediaPipe's head pose from its metric landmarks
(engine.capture.geometry, as its procrustes_solver.cc fits the canonical mesh), the landmarks
brought into the canonical frame for the expression basis (engine.training.alignment), and a
mesh's shape error against tracked landmarks (engine.training.geometry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """dst ~ scale * rotation @ src + translation, per frame: rotation (N, 3, 3) proper, scale (N,)
    (1 where the fit had no scale), translation (N, 3)."""

    rotation: np.ndarray
    scale: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, V, 3) or (V, 3) points -> (N, V, 3), moved by each frame's similarity."""
        points = np.broadcast_to(points, (len(self.scale), *points.shape[-2:]))
        turned = np.einsum("nij,nvj->nvi", self.rotation, points)
        return self.scale[:, None, None] * turned + self.translation[:, None, :]

    def matrix(self) -> np.ndarray:
        """(N, 4, 4) homogeneous transforms."""
        out = np.zeros((len(self.scale), 4, 4))
        out[:, :3, :3] = self.rotation * self.scale[:, None, None]
        out[:, :3, 3] = self.translation
        out[:, 3, 3] = 1.0
        return out


def fit_similarity(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, scale: bool = True
) -> Similarity:
    """The similarity per frame moving `src` onto `dst`, each (N, V, 3) or (V, 3) (one set shared by
    every frame; at least one of them per frame). `weights` (V,): only points with weight > 0
    decide the fit (None: all alike); `scale` False fits rotation and translation only."""
    if src.ndim == 2 and dst.ndim == 2:
        raise ValueError("fit_similarity needs per-frame points in src or dst: (N, V, 3)")
    if src.shape[-2:] != dst.shape[-2:] or src.shape[-1] != 3:
        raise ValueError(
            f"fit_similarity: src {src.shape} and dst {dst.shape} are not (.., V, 3) alike"
        )
    if weights is not None and not (np.all(weights >= 0) and np.sum(weights) > 0):
        raise ValueError("fit_similarity: weights must be >= 0 with a positive sum")
    frames = (src if src.ndim == 3 else dst).shape[0]
    src = np.broadcast_to(src, (frames, *src.shape[-2:])).astype(np.float64)
    dst = np.broadcast_to(dst, (frames, *dst.shape[-2:])).astype(np.float64)
    w = np.ones(src.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_src = np.einsum("v,nvc->nc", w, src)
    mu_dst = np.einsum("v,nvc->nc", w, dst)
    s0 = src - mu_src[:, None]
    d0 = dst - mu_dst[:, None]
    cov = np.einsum("v,nvi,nvj->nij", w, d0, s0)  # (N, 3, 3)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)  # no reflections
    fix = np.ones((frames, 3))
    fix[:, 2] = sign
    rotation = np.einsum("nij,nj,njk->nik", u, fix, vt)
    if scale:
        factor = (sv * fix).sum(axis=1) / np.einsum("v,nvc->n", w, s0**2)
    else:
        factor = np.ones(frames)
    translation = mu_dst - factor[:, None] * np.einsum("nij,nj->ni", rotation, mu_src)
    return Similarity(rotation=rotation, scale=factor, translation=translation)
