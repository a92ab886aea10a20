"""Two rasterisers that `engine.render.raster.rasterize` is held to in the tests: an obviously
correct one in double precision (a Python loop, slow), and PyTorch3D's where its compiled extension
loads. Both return the same `Fragments`, under the same rules."""

from __future__ import annotations

import numpy as np
import torch

from engine.camera import MIN_DEPTH
from engine.render.raster import EMPTY_DEPTH, Fragments, check_inputs
from engine.render.raster_cpu import MIN_AREA_PX2

REFERENCE_DTYPE = np.float64  # the reference rasteriser computes in double precision


def rasterize_reference(
    verts: torch.Tensor, faces: torch.Tensor, height: int, width: int
) -> Fragments:
    """The obviously-correct rasteriser the tests hold `rasterize` to: a Python loop over
    triangles in double precision, each testing every pixel centre of its bounding box with its
    three edge functions and keeping it where at least as near as the z-buffer (so exact ties go
    to the higher face index, as in `rasterize`). Slow: for tests only."""
    check_inputs(verts, faces, height, width)
    batch = verts.shape[0]
    v_all = verts.detach().cpu().numpy().astype(REFERENCE_DTYPE)  # (B, V, 3)
    f_np = faces.cpu().numpy()
    zbuf = np.full((batch, height, width), np.inf, dtype=REFERENCE_DTYPE)
    face_idx = np.full((batch, height, width), -1, dtype=np.int64)
    bary = np.zeros((batch, height, width, 3), dtype=REFERENCE_DTYPE)
    for b in range(batch):
        for f, corner_ids in enumerate(f_np):
            corners = v_all[b, corner_ids]  # (3, 3)
            if not np.isfinite(corners).all() or corners[:, 2].min() <= MIN_DEPTH:
                continue
            (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = corners
            area2 = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
            if abs(area2) < MIN_AREA_PX2:
                continue
            c_lo = max(0, int(np.ceil(corners[:, 0].min() - 0.5)))
            c_hi = min(width - 1, int(np.floor(corners[:, 0].max() - 0.5)))
            r_lo = max(0, int(np.ceil(corners[:, 1].min() - 0.5)))
            r_hi = min(height - 1, int(np.floor(corners[:, 1].max() - 0.5)))
            if c_lo > c_hi or r_lo > r_hi:
                continue
            px = np.arange(c_lo, c_hi + 1, dtype=REFERENCE_DTYPE)[None, :] + 0.5  # (1, w)
            py = np.arange(r_lo, r_hi + 1, dtype=REFERENCE_DTYPE)[:, None] + 0.5  # (h, 1)
            # Weight k is the signed area of the sub-triangle opposite corner k over the whole.
            w0 = ((x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)) / area2  # (h, w)
            w1 = ((x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)) / area2  # (h, w)
            w2 = ((x0 - px) * (y1 - py) - (y0 - py) * (x1 - px)) / area2  # (h, w)
            z = w0 * z0 + w1 * z1 + w2 * z2  # (h, w)
            region = (b, slice(r_lo, r_hi + 1), slice(c_lo, c_hi + 1))
            wins = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (z <= zbuf[region])  # (h, w)
            zbuf[region] = np.where(wins, z, zbuf[region])
            face_idx[region] = np.where(wins, f, face_idx[region])
            bary[region] = np.where(wins[..., None], np.stack((w0, w1, w2), -1), bary[region])
    mask = face_idx >= 0
    return Fragments(
        face_idx=torch.from_numpy(face_idx).to(verts.device),
        bary=torch.from_numpy(bary).to(verts.device, torch.float32),
        depth=torch.from_numpy(np.where(mask, zbuf, EMPTY_DEPTH)).to(verts.device, torch.float32),
        mask=torch.from_numpy(mask).to(verts.device),
    )


def pytorch3d_available() -> bool:
    """Whether PyTorch3D's compiled rasteriser loads here (it needs a matching CUDA torch)."""
    try:
        import pytorch3d._C  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def rasterize_pytorch3d(
    verts: torch.Tensor, faces: torch.Tensor, height: int, width: int
) -> Fragments:
    """The same fragments from PyTorch3D's `rasterize_meshes`, where its extension loads.

    PyTorch3D's NDC has +X left, +Y up and the shorter image side spanning [-1, 1]; its output
    pixel (row i, column j) is centred at x = (W - 2 (j + 0.5)) / S, y = (H - 2 (i + 0.5)) / S
    with S = min(H, W). So a screen point (x, y) maps to ((W - 2x) / S, (H - 2y) / S), z kept.
    Barycentrics are screen-space (perspective_correct=False) and no face is culled, as here.
    PyTorch3D counts a centre on an edge as outside, so edge pixels may differ.
    """
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    check_inputs(verts, faces, height, width)
    batch, num_faces = verts.shape[0], faces.shape[0]
    short = float(min(height, width))
    v = verts.detach().float()
    ndc = torch.stack(
        ((width - 2.0 * v[..., 0]) / short, (height - 2.0 * v[..., 1]) / short, v[..., 2]), -1
    )  # (B, V, 3)
    meshes = Meshes(verts=list(ndc), faces=[faces] * batch)
    pix_to_face, zbuf, bary, _ = rasterize_meshes(
        meshes,
        image_size=(height, width),
        blur_radius=0.0,
        faces_per_pixel=1,
        bin_size=0,  # naive rasterisation: no bin overflow to think about in a reference
        perspective_correct=False,
        cull_backfaces=False,
    )
    packed = pix_to_face[..., 0]  # (B, H, W) index into the packed faces of all meshes
    mask = packed >= 0
    per_image = torch.arange(batch, device=packed.device)[:, None, None] * num_faces
    return Fragments(
        face_idx=torch.where(mask, packed - per_image, -1),
        bary=torch.where(mask[..., None], bary[..., 0, :], 0.0),
        depth=torch.where(mask, zbuf[..., 0], EMPTY_DEPTH),
        mask=mask,
    )
