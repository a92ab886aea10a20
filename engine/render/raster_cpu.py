"""The rasteriser compiled for the CPU: the same rules as `engine.render.raster`, as loops.

The pure-PyTorch rasteriser avoids a pixels x triangles test by expanding row spans into tensors
of candidate pixels, sorting them through one `scatter_reduce`: right for a GPU and for training
batches, but at batch 1 on a CPU its ~20 tensor operations and their allocations cost more than
the arithmetic (1.6 ms for the face mesh at 256^2 on two idle cores, 3.4 ms for a served frame's
whole UV stage: a third of a warped frame). Here the same walk is a loop compiled by Numba: every
triangle's rows, every row's span of pixel centres, a depth test per pixel, and the winners'
barycentrics and attributes at the end (0.25 ms; 0.42 with the UV map).

It follows `raster`'s rules (its module docstring) with the same per-triangle arithmetic in double
precision: the crossing of an edge with a row's centre line is computed from the edge's upper end
with one slope, so triangles sharing an edge meet without cracks; depth is linear in screen space,
compared as float32, exact ties go to the higher face index; triangles behind the camera,
degenerate or non-finite are dropped. Barycentrics are float32 from float32 planes relative to
corner 0, as in `raster`.

Compiled on first use and cached on disk next to this file (or in Numba's user cache where this
directory is read-only); `available()` says whether Numba loads here: without it `raster` keeps
its PyTorch path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from engine.camera import MIN_DEPTH

MIN_AREA_PX2 = 1e-6  # twice the signed area (px^2) below which a triangle is degenerate: dropped
PLANES = 7  # per face: 1, a1, a2, b1, b2, x0, y0 (see `raster._Setup.bary`)

try:
    import numba

    _NUMBA: Any = numba
except ImportError:  # pragma: no cover - numba is a pinned requirement; this is the fallback
    _NUMBA = None


def available() -> bool:
    """Whether the compiled rasteriser can run here (Numba imports)."""
    return _NUMBA is not None


def _kernel(
    verts: np.ndarray,
    faces: np.ndarray,
    height: int,
    width: int,
    face_attrs: np.ndarray,
    face_idx: np.ndarray,
    bary: np.ndarray,
    depth: np.ndarray,
    mask: np.ndarray,
    values: np.ndarray,
) -> None:
    """verts (B, V, 3) float64 screen points, faces (F, 3) int64, face_attrs (F, 3, C) float32
    per-corner attributes (C may be 0) -> fills face_idx (B, H, W) int64 (-1 empty), bary
    (3, B, H, W) float32, depth (B, H, W) float32 (0 empty), mask (B, H, W) bool and values
    (C, B, H, W) float32, the attributes interpolated (0 empty), which arrive as -1, 0, +inf,
    False and 0."""
    batch = verts.shape[0]
    num_faces = faces.shape[0]
    planes = np.zeros((num_faces, PLANES), dtype=np.float32)
    for b in range(batch):
        top, bottom = height, -1  # the rows any triangle reached: the second pass's range
        for f in range(num_faces):
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            x0, y0, z0 = verts[b, i0, 0], verts[b, i0, 1], verts[b, i0, 2]
            x1, y1, z1 = verts[b, i1, 0], verts[b, i1, 1], verts[b, i1, 2]
            x2, y2, z2 = verts[b, i2, 0], verts[b, i2, 1], verts[b, i2, 2]
            d1x, d1y, d1z = x1 - x0, y1 - y0, z1 - z0
            d2x, d2y, d2z = x2 - x0, y2 - y0, z2 - z0
            area2 = d1x * d2y - d1y * d2x
            total = x0 + y0 + z0 + x1 + y1 + z1 + x2 + y2 + z2
            if not (abs(area2) >= MIN_AREA_PX2 and min(z0, z1, z2) > MIN_DEPTH):
                continue  # dropped: never a winner
            if not math.isfinite(total):
                continue
            inv = 1.0 / area2
            a1, b1 = d2y * inv, -d2x * inv
            a2, b2 = -d1y * inv, d1x * inv
            gx = a1 * d1z + a2 * d2z
            gy = b1 * d1z + b2 * d2z
            z_origin = z0 - gx * x0 - gy * y0
            planes[f, 0] = 1.0
            planes[f, 1] = a1
            planes[f, 2] = a2
            planes[f, 3] = b1
            planes[f, 4] = b2
            planes[f, 5] = x0
            planes[f, 6] = y0
            # Corners sorted by y: top, mid, bottom (a three-element sort).
            xt, yt, xm, ym, xb, yb = x0, y0, x1, y1, x2, y2
            if ym < yt:
                xt, yt, xm, ym = xm, ym, xt, yt
            if yb < ym:
                xm, ym, xb, yb = xb, yb, xm, ym
            if ym < yt:
                xt, yt, xm, ym = xm, ym, xt, yt
            slope_long = (xb - xt) / (yb - yt) if yb > yt else 0.0
            slope_upper = (xm - xt) / (ym - yt) if ym > yt else 0.0
            slope_lower = (xb - xm) / (yb - ym) if yb > ym else 0.0
            # Clamped as floats, then made integers: a corner near the camera plane projects to
            # pixel coordinates beyond int64.
            row_lo = int(min(max(np.ceil(yt - 0.5), 0.0), height))
            row_hi = int(min(max(np.floor(yb - 0.5), -1.0), height - 1))
            top, bottom = min(top, row_lo), max(bottom, row_hi)
            for row in range(row_lo, row_hi + 1):
                y = row + 0.5
                from_top = y - yt
                x_long = xt + slope_long * from_top
                x_short = xt + slope_upper * from_top if y < ym else xm + slope_lower * (y - ym)
                col_lo = int(min(max(np.ceil(min(x_long, x_short) - 0.5), 0.0), width))
                col_hi = int(min(max(np.floor(max(x_long, x_short) - 0.5), -1.0), width - 1))
                z_row = z_origin + gy * y
                for col in range(col_lo, col_hi + 1):
                    z = np.float32(max(z_row + gx * (col + 0.5), 0.0))
                    if z <= depth[b, row, col]:  # ties: the later (higher) face wins
                        depth[b, row, col] = z
                        face_idx[b, row, col] = f
        # The winners' barycentrics at every pixel centre, in float32 as `raster` makes them.
        for row in range(height):
            if row < top or row > bottom:
                depth[b, row, :] = 0.0
                continue
            py = np.float32(row + 0.5)
            for col in range(width):
                f = face_idx[b, row, col]
                if f < 0:
                    depth[b, row, col] = 0.0
                    continue
                dx = np.float32(col + 0.5) - planes[f, 5]
                dy = py - planes[f, 6]
                w1 = planes[f, 1] * dx + planes[f, 3] * dy
                w2 = planes[f, 2] * dx + planes[f, 4] * dy
                w0 = planes[f, 0] - w1 - w2
                mask[b, row, col] = True
                bary[0, b, row, col] = w0
                bary[1, b, row, col] = w1
                bary[2, b, row, col] = w2
                for k in range(face_attrs.shape[2]):
                    values[k, b, row, col] = (
                        face_attrs[f, 0, k] * w0
                        + face_attrs[f, 1, k] * w1
                        + face_attrs[f, 2, k] * w2
                    )


_compiled: Any = None


def _compiled_kernel() -> Any:
    global _compiled
    if _compiled is None:
        # No fastmath: contracting a multiply and an add into one FMA would round a shared edge's
        # crossing differently in its two triangles.
        _compiled = _NUMBA.njit(cache=True, nogil=True)(_kernel)
    return _compiled


def rasterize_cpu(
    verts: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    face_attrs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(B, V, 3) CPU screen points and (F, 3) int64 faces -> face_idx (B, H, W) int64, bary
    (B, H, W, 3) float32 (a channels-last view of a channels-first buffer), depth (B, H, W)
    float32 and mask (B, H, W) bool, by `raster`'s rules, and with (F, 3, C) `face_attrs` their values at every pixel
    (B, H, W, C) float32 (a channels-last view too; what `raster.interpolate` gives, made in the
    same pass: no gradient). Inputs are checked by the caller (`raster.rasterize`)."""
    batch = verts.shape[0]
    v = np.ascontiguousarray(verts.detach().to(torch.float64).numpy())  # as `raster`'s setup
    f = np.ascontiguousarray(faces.numpy())
    if f.size and (f.min() < 0 or f.max() >= v.shape[1]):
        # Compiled loops do not check bounds: a bad index would read past the vertices.
        raise ValueError(f"faces index vertices 0..{v.shape[1] - 1}, got {f.min()}..{f.max()}")
    channels = 0 if face_attrs is None else face_attrs.shape[2]
    attrs = (
        np.zeros((f.shape[0], 3, 0), dtype=np.float32)
        if face_attrs is None
        else np.ascontiguousarray(face_attrs.detach().to(torch.float32).numpy())
    )
    face_idx = np.full((batch, height, width), -1, dtype=np.int64)
    bary = np.zeros((3, batch, height, width), dtype=np.float32)
    depth = np.full((batch, height, width), np.inf, dtype=np.float32)
    mask = np.zeros((batch, height, width), dtype=np.bool_)
    values = np.zeros((channels, batch, height, width), dtype=np.float32)
    _compiled_kernel()(v, f, height, width, attrs, face_idx, bary, depth, mask, values)
    return (
        torch.from_numpy(face_idx),
        torch.from_numpy(bary).permute(1, 2, 3, 0),
        torch.from_numpy(depth),
        torch.from_numpy(mask),
        None if face_attrs is None else torch.from_numpy(values).permute(1, 2, 3, 0),
    )
