"""Mesh -> per-pixel fragments, UV maps, and the pixel motion between two meshes.

A screen-space triangle rasteriser, batched, CPU or CUDA: in PyTorch operations (`rasterize_torch`,
what CUDA runs), and on the CPU the same rules as loops compiled by Numba
(engine/render/raster_cpu.py: the face at 256^2, batch 1, in 0.25 ms against 1.6 ms; the UV
stage of a served frame went 3.4 -> 0.9 ms), which `rasterize` takes wherever Numba loads.
Input vertices are screen points from `engine.camera.project`: x, y in pixels (the centre of pixel
(row i, column j) is (j + 0.5, i + 0.5)) and z = camera depth > 0, smaller is closer.

Rules, the same in `rasterize` and in `rasterize_reference` (engine/render/raster_reference.py):
- A pixel is covered by a triangle when its centre lies inside it or on its border. Both windings
  are drawn (no back-face culling: the face mesh is open and may be seen from either side).
- The nearest triangle wins. Depth and barycentrics are interpolated linearly in screen space (not
  perspective-correct): the face mesh's triangles span a few pixels and a few millimetres of
  depth, so the difference is far below a pixel's worth of UV. Exact depth ties (as float32) go
  to the higher face index.
- Triangles with a corner at depth <= `MIN_DEPTH` (at or behind the camera) are dropped, not
  clipped, and so are degenerate ones (twice the area below `MIN_AREA_PX2`) and non-finite ones.
- No gradient flows through the rasteriser: fragments are computed under `torch.no_grad`.
  `interpolate` is differentiable in the attributes it is given.

How `rasterize_torch` avoids a pixels x triangles test:
1. Rows: every triangle lists the pixel rows whose centre line crosses it, and for each row the
   covered columns are one span between its long edge and one of its short edges. Each edge is
   crossed from its upper end with one slope, so two triangles sharing an edge compute bit-
   identical crossings and meet without cracks (a centre exactly on the edge is drawn by both and
   the depth test picks one).
2. Candidates: spans are expanded to pixels (`repeat_interleave`); each candidate gets its depth
   from its row's depth line and one int64 key, (inverted float32 bits of depth << face bits) |
   (face + 1). Positive float32 bit patterns sort like the floats, so one `scatter_reduce_(amax)`
   over a zeroed image is the whole z-buffer and leaves the winner's face and exact depth.
3. Resolve: face and depth are decoded from the key; the winner's barycentrics are recomputed
   at every pixel centre from per-face planes.
The work is proportional to the covered pixels plus the rows, never to the bounding boxes.

Speed note: a call allocates a few MB of tensors. With glibc's default malloc settings those
come back from the kernel as fresh pages each call, and on a small VM the page faults can cost as
much as the arithmetic; a process that renders every frame should raise `MALLOC_MMAP_THRESHOLD_`
and `MALLOC_TRIM_THRESHOLD_` (or use jemalloc/tcmalloc). `bench.raster_timing` records the
malloc settings and the page faults per call next to its timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from engine.camera import MIN_DEPTH
from engine.render import raster_cpu
from engine.render.raster_cpu import MIN_AREA_PX2

EMPTY_DEPTH = 0.0  # depth where no triangle covers a pixel (the key of an empty pixel decodes so)
DEPTH_KEY_TOP = 1 << 31  # key's depth part = DEPTH_KEY_TOP - float32 bits: nearer = larger
FLOAT_BITS_MASK = (1 << 31) - 1  # the bits of a non-negative float32
LOW_32_BITS = (1 << 32) - 1
MAX_FACE_BITS = 31  # 32 depth bits + 31 face bits stay inside int64's 63
TAP_WEIGHT_EPS = 1e-3  # a bilinear tap whose 1-D weight is at most this cannot smear: not checked
TAP_PAD_PX = 2  # empty border around frame A's depth for taps that fall off the image
DEPTH_TOLERANCE_REL = 0.01  # same-surface depth match in pixel_motion: 1% of depth (6 mm at 60 cm)
OUTSIDE_GRID = -2.0  # grid value of uncovered pixels: outside [-1, 1], grid_sample reads zeros


@dataclass(frozen=True)
class Fragments:
    """The nearest triangle at every pixel of a batch of B images of H x W pixels.

    face_idx: (B, H, W) int64, the index into `faces` of the winning triangle, -1 where empty.
    bary: (B, H, W, 3) float32, screen-space barycentric weights of the winner's corners (in
        `faces` order) at the pixel centre, zeros where empty; they may stray ~1e-6 outside
        [0, 1] for centres on an edge. From `rasterize` it is a channels-last view of a
        channels-first buffer: `bary.permute(0, 3, 1, 2)` is free, `bary[..., k]` contiguous.
    depth: (B, H, W) float32, interpolated camera depth of the winner, `EMPTY_DEPTH` (0) where
        empty.
    mask: (B, H, W) bool, True where a triangle covers the pixel.
    """

    face_idx: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.mask.shape[1]), int(self.mask.shape[2])


@dataclass(frozen=True)
class UVMap:
    """Texture coordinates seen at every pixel.

    uv: (B, H, W, 2) float in [0, 1] (u right, v down: the texture image's own axes), zero where
        empty; a channels-last view of a channels-first buffer, like `Fragments.bary`.
    mask: (B, H, W) bool, True where the mesh covers the pixel.
    depth: (B, H, W) float32 camera depth, zero where empty.
    """

    uv: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor

    def grid(self) -> torch.Tensor:
        """(B, H, W, 2) grid for `grid_sample(texture, grid, align_corners=False)`: uv * 2 - 1,
        and `OUTSIDE_GRID` where empty so that the texture reads as zero there."""
        covered = self.mask.to(self.uv.dtype)[..., None]  # (B, H, W, 1) 1 or 0
        return self.uv * 2.0 + (covered - 2.0)  # (B, H, W, 2); uv is 0 where empty


@dataclass(frozen=True)
class PixelMotion:
    """Where each pixel of frame B was in frame A, for warping frame A's images to frame B.

    grid: (B, H, W, 2) float32, for every pixel of frame B the position in frame A of the surface
        point it shows (same face, same barycentrics), as a `grid_sample` coordinate with
        align_corners=False (2 * p / size - 1); `OUTSIDE_GRID` where frame B is empty.
    valid: (B, H, W) bool, True where frame B is covered and frame A shows that same surface at
        every bilinear tap that a sample there reads (see `pixel_motion`): not occluded in A, not
        off A's image, not mixed with background.
    """

    grid: torch.Tensor
    valid: torch.Tensor

    def warp(self, image_a: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """(B, C, Ha, Wa) frame-A image -> (B, C, H, W) frame-B image, zero where not `valid`."""
        warped = F.grid_sample(
            image_a, self.grid.to(image_a.dtype), mode=mode, align_corners=False
        )  # (B, C, H, W)
        return warped * self.valid[:, None].to(warped.dtype)


# ----------------------------------------------------------------------------- fast rasteriser


@lru_cache(maxsize=16)
def _pixel_centres(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(H*W,) x and (H*W,) y of every pixel centre, float32, row-major; cached per size/device."""
    with torch.inference_mode(False), torch.no_grad():  # cached tensors must be usable anywhere
        xs = torch.arange(width, dtype=torch.float32, device=device) + 0.5
        ys = torch.arange(height, dtype=torch.float32, device=device) + 0.5
        return xs.repeat(height), ys.repeat_interleave(width)


def check_inputs(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> None:
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3) screen points, got {tuple(verts.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3 or faces.dtype != torch.int64:
        raise ValueError(f"faces must be an (F, 3) int64 tensor, got {faces.dtype} {faces.shape}")
    if faces.device != verts.device:
        raise ValueError(f"faces are on {faces.device} but verts on {verts.device}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if faces.shape[0] >= 1 << MAX_FACE_BITS:
        raise ValueError(f"too many faces for the z-buffer key: {faces.shape[0]}")


@dataclass(frozen=True)
class _Setup:
    """Per-triangle tables of a batch: T = B*F triangles, image b's at b*F .. b*F+F-1.

    rows: (T, 10) float64 table for the row stage, with the corners sorted by y into top, mid
        and bottom: x_top, y_top, the slope dx/dy of the long edge (top -> bottom), x_mid, y_mid,
        the slopes of the upper (top -> mid) and lower (mid -> bottom) short edges, and the depth
        plane z = z_origin + gx * x + gy * y, in pixels.
    row_lo: (T,) int64 first row whose centre line is inside the triangle.
    n_rows: (T,) int64 number of such rows on the image (0 for dropped triangles).
    bary: (7, B*(F+1)) float32 planes 1, a1, a2, b1, b2, x0, y0 of each face, face f of image b
        in column b*(F+1) + f + 1 and an all-zero column b*(F+1) for that image's empty pixels:
        w1 = a1 dx + b1 dy, w2 = a2 dx + b2 dy, w0 = 1 - w1 - w2 with dx = x - x0, dy = y - y0
        (relative to corner 0, so pixel coordinates in the hundreds do not cancel).
    """

    rows: torch.Tensor
    row_lo: torch.Tensor
    n_rows: torch.Tensor
    bary: torch.Tensor


def _triangle_setup(verts: torch.Tensor, faces: torch.Tensor, height: int) -> _Setup:
    batch, num_faces = verts.shape[0], faces.shape[0]
    # Double precision: this is per triangle (cheap), and every pixel inherits these values.
    c = verts.detach().to(torch.float64)[:, faces].reshape(-1, 3, 3)  # (T, 3, 3)
    d1 = c[:, 1] - c[:, 0]  # (T, 3)
    d2 = c[:, 2] - c[:, 0]  # (T, 3)
    area2 = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]  # (T,) twice the signed area, px^2
    drawable = (
        (area2.abs() >= MIN_AREA_PX2) & (c[..., 2].amin(1) > MIN_DEPTH) & c.sum((1, 2)).isfinite()
    )  # (T,)
    inv = 1.0 / torch.where(drawable, area2, 1.0)  # (T,)
    a1, b1 = d2[:, 1] * inv, -d2[:, 0] * inv  # (T,) w1 = a1 dx + b1 dy
    a2, b2 = -d1[:, 1] * inv, d1[:, 0] * inv  # (T,) w2 = a2 dx + b2 dy
    gx = a1 * d1[:, 2] + a2 * d2[:, 2]  # (T,) depth gradient, depth units per pixel
    gy = b1 * d1[:, 2] + b2 * d2[:, 2]  # (T,)
    z_origin = c[:, 0, 2] - gx * c[:, 0, 0] - gy * c[:, 0, 1]  # (T,) depth plane at (0, 0)

    # Every edge is crossed from its upper end with slope (x_low - x_up) / (y_low - y_up): the
    # same numbers in both triangles that share it. Horizontal edges are never crossed inside
    # the row range (they are its first or last line), so their slope is a harmless 0.
    ys, order = torch.sort(c[..., 1], dim=1)  # (T, 3) top, mid, bottom
    xs = torch.gather(c[..., 0], 1, order)  # (T, 3)
    dx = xs[:, [2, 1, 2]] - xs[:, [0, 0, 1]]  # (T, 3) long, upper, lower edge
    dy = ys[:, [2, 1, 2]] - ys[:, [0, 0, 1]]  # (T, 3), >= 0
    slopes = torch.where(dy > 0, dx / dy, 0.0)  # (T, 3)
    rows = torch.stack(
        (
            xs[:, 0],
            ys[:, 0],
            slopes[:, 0],
            xs[:, 1],
            ys[:, 1],
            slopes[:, 1],
            slopes[:, 2],
            z_origin,
            gx,
            gy,
        ),
        dim=1,
    )  # (T, 10)
    row_lo = torch.ceil(ys[:, 0] - 0.5).clamp_(0, height)  # (T,)
    row_hi = torch.floor(ys[:, 2] - 0.5).clamp_(-1, height - 1)  # (T,)
    n_rows = torch.where(drawable, row_hi - row_lo + 1, 0.0).clamp_(min=0).long()  # (T,)

    planes = torch.stack((torch.ones_like(a1), a1, a2, b1, b2, c[:, 0, 0], c[:, 0, 1]))  # (7, T)
    planes = F.pad(planes.view(7, batch, num_faces), (1, 0))  # (7, B, F+1)
    bary = planes.reshape(7, -1).to(torch.float32)  # (7, B*(F+1))
    return _Setup(rows=rows, row_lo=row_lo.long(), n_rows=n_rows, bary=bary)


@dataclass(frozen=True)
class _Spans:
    """The rows of all triangles (R in all) and the span of pixel columns each covers.

    tri, row: (R,) int64 triangle and image row; y: (R,) float64 row centre line; col_lo,
    n_cols: (R,) int64 first covered column and number of them (0 when the row's span misses
    every pixel centre); depth: (3, R) float64 z_origin, gx, gy of the row's triangle.
    """

    tri: torch.Tensor
    row: torch.Tensor
    y: torch.Tensor
    col_lo: torch.Tensor
    n_cols: torch.Tensor
    depth: torch.Tensor


def _row_spans(setup: _Setup, width: int) -> _Spans:
    total_rows = int(setup.n_rows.sum())
    tri = torch.repeat_interleave(setup.n_rows, output_size=total_rows)  # (R,)
    first = torch.cumsum(setup.n_rows, 0) - setup.n_rows  # (T,) first row slot of each triangle
    row = torch.arange(total_rows, device=tri.device) + (setup.row_lo - first).index_select(0, tri)
    planes = setup.rows.index_select(0, tri).T  # (10, R): a row gather beats a column gather
    x_top, y_top, slope_long, x_mid, y_mid, slope_upper, slope_lower = planes[:7]  # (R,) each
    y = row.to(planes.dtype) + 0.5  # (R,) centre line of the row
    # Multiply and add as separate operations (no fused multiply-add), so that a shared edge's
    # crossing rounds the same way wherever in the tensor it is computed.
    from_top = y - y_top  # (R,)
    x_long = x_top + slope_long * from_top  # (R,)
    x_short = torch.where(
        y < y_mid, x_top + slope_upper * from_top, x_mid + slope_lower * (y - y_mid)
    )  # (R,)
    col_lo = torch.ceil(torch.minimum(x_long, x_short) - 0.5).clamp_(0, width)  # (R,)
    col_hi = torch.floor(torch.maximum(x_long, x_short) - 0.5).clamp_(-1, width - 1)  # (R,)
    n_cols = (col_hi - col_lo + 1).clamp_(min=0).long()  # (R,)
    return _Spans(tri=tri, row=row, y=y, col_lo=col_lo.long(), n_cols=n_cols, depth=planes[7:])


def _z_buffer(
    spans: _Spans, num_faces: int, face_bits: int, shape: tuple[int, int, int]
) -> torch.Tensor:
    """Expand the spans to candidate pixels and keep the nearest per pixel: (B*H*W,) int64 keys
    ((DEPTH_KEY_TOP - float32 bits of depth) << face_bits) | (face + 1), 0 where empty."""
    batch, height, width = shape
    device = spans.tri.device
    zbuf = torch.zeros(batch * height * width, dtype=torch.int64, device=device)
    n_cols = spans.n_cols
    total = int(n_cols.sum())
    if total == 0:
        return zbuf
    # Per row, everything a candidate needs, so that a candidate costs three gathers:
    # packed = (flat index of the row's first pixel - its first candidate slot) << 32 | face + 1,
    # and a depth line over the candidate slot k (float64, as k runs to millions).
    slot0 = torch.cumsum(n_cols, 0) - n_cols  # (R,) first candidate slot of each row
    image = torch.div(spans.tri, num_faces, rounding_mode="floor")  # (R,)
    start = (image * height + spans.row) * width + spans.col_lo  # (R,) flat index of span start
    packed = ((start - slot0) << 32) | (spans.tri - image * num_faces + 1)  # (R,)
    z_origin, gx, gy = spans.depth  # (R,) each
    gx = gx.contiguous()  # a column of the row table; gathers read contiguous sources faster
    z_slot0 = z_origin + gx * (spans.col_lo - slot0 + 0.5) + gy * spans.y  # (R,) depth at k = 0

    pix_row = torch.repeat_interleave(n_cols, output_size=total)  # (N,) row of each candidate
    slot = torch.arange(total, device=device, dtype=torch.float64)  # (N,)
    depth = torch.addcmul(z_slot0.index_select(0, pix_row), gx.index_select(0, pix_row), slot)
    # A positive float32's bits sort like the float: nearer = fewer bits = larger key.
    key = depth.to(torch.float32).clamp_(min=0.0).view(torch.int32).long()  # (N,) depth bits
    pk = packed.index_select(0, pix_row)  # (N,)
    key.neg_().add_(DEPTH_KEY_TOP).bitwise_left_shift_(face_bits).bitwise_or_(pk & LOW_32_BITS)
    target = pk.bitwise_right_shift_(32).add_(torch.arange(total, device=device))  # (N,)
    return zbuf.scatter_reduce_(0, target, key, reduce="amax")


def rasterize(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> Fragments:
    """Rasterise a batch of meshes sharing one topology.

    verts: (B, V, 3) screen points (x, y in pixels, z = depth > 0); faces: (F, 3) int64.
    Returns `Fragments` of shape (B, height, width); the rules are in the module docstring.
    """
    check_inputs(verts, faces, height, width)
    if _compiled(verts):
        face_idx, bary, depth, mask, _ = raster_cpu.rasterize_cpu(verts, faces, height, width)
        return Fragments(face_idx=face_idx, bary=bary, depth=depth, mask=mask)
    return rasterize_torch(verts, faces, height, width)


def _compiled(verts: torch.Tensor) -> bool:
    """Whether `rasterize` takes the compiled CPU rasteriser for these points."""
    return verts.device.type == "cpu" and raster_cpu.available()


def rasterize_torch(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> Fragments:
    """`rasterize` in PyTorch operations on any device (the one CUDA uses; on the CPU where the
    compiled one, engine/render/raster_cpu.py, cannot load)."""
    check_inputs(verts, faces, height, width)
    with torch.no_grad():
        return _rasterize(verts, faces, height, width)


def _rasterize(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> Fragments:
    batch, num_faces = verts.shape[0], faces.shape[0]
    device, pixels = verts.device, height * width
    face_bits = max(1, num_faces.bit_length())  # room for face + 1 in 1 .. F
    setup = _triangle_setup(verts, faces, height)
    spans = _row_spans(setup, width)
    zbuf = _z_buffer(spans, num_faces, face_bits, (batch, height, width))  # (B*H*W,)

    lo = zbuf & ((1 << face_bits) - 1)  # (B*H*W,) winning face + 1, 0 where empty
    face_idx = lo - 1  # (B*H*W,)
    depth_bits = zbuf.bitwise_right_shift_(face_bits).neg_().add_(DEPTH_KEY_TOP)  # (B*H*W,)
    # An empty pixel's 2**31 masks to 0, the bits of 0.0.
    depth = depth_bits.bitwise_and_(FLOAT_BITS_MASK).to(torch.int32).view(torch.float32)

    # Barycentrics of the winner at every pixel centre, one plane at a time (channels-first keeps
    # every operation contiguous; empty pixels read the all-zero column). The gathered planes are
    # worked on in place: the first three become w0, w1, w2, the rest are scratch.
    if batch > 1:
        first_column = torch.arange(batch, device=device) * (num_faces + 1)  # (B,)
        lo = (lo.view(batch, pixels) + first_column[:, None]).view(-1)  # (B*H*W,)
    xs, ys = _pixel_centres(height, width, device)  # (H*W,) each
    planes = setup.bary.index_select(1, lo).view(7, batch, pixels)  # (7, B, H*W)
    w0, w1, w2, b1, b2, dx, dy = planes  # (B, H*W) each; the bary view keeps all 7 alive
    dx.neg_().add_(xs)  # x - x0
    dy.neg_().add_(ys)  # y - y0
    w1.mul_(dx).addcmul_(b1, dy)
    w2.mul_(dx).addcmul_(b2, dy)
    w0.sub_(w1).sub_(w2)
    return Fragments(
        face_idx=face_idx.view(batch, height, width),
        bary=planes[:3].view(3, batch, height, width).permute(1, 2, 3, 0),  # (B, H, W, 3)
        depth=depth.view(batch, height, width),
        mask=(face_idx >= 0).view(batch, height, width),
    )


# ----------------------------------------------------------------------------- using fragments


def interpolate(fragments: Fragments, face_attrs: torch.Tensor) -> torch.Tensor:
    """Per-corner attributes -> per-pixel values, zero where empty.

    face_attrs: (F, 3, C) shared by the batch, or (B, F, 3, C) per image (e.g. `uvs[faces]`,
    `verts[:, faces]`). Returns (B, H, W, C), a channels-last view of a channels-first buffer
    (`.permute(0, 3, 1, 2)` is free), differentiable in `face_attrs`.
    """
    batch, height, width = fragments.mask.shape
    pixels = height * width
    if face_attrs.ndim == 3:
        face_attrs = face_attrs[None]  # (1, F, 3, C)
    if face_attrs.ndim != 4 or face_attrs.shape[0] not in (1, batch) or face_attrs.shape[2] != 3:
        raise ValueError(f"face_attrs must be (F, 3, C) or (B, F, 3, C), got {face_attrs.shape}")
    sets, num_faces, _, channels = face_attrs.shape
    # Corner planes with a zero column 0 per set for empty pixels (whose weights are zero
    # anyway); gathering whole planes keeps the arithmetic below contiguous.
    padded = F.pad(face_attrs, (0, 0, 0, 0, 1, 0))  # (S, F+1, 3, C)
    table = padded.permute(2, 3, 0, 1).reshape(3 * channels, -1)  # (3C, S*(F+1))
    index = fragments.face_idx + 1  # (B, H, W), 0 where empty
    if sets > 1:
        index = index + torch.arange(batch, device=index.device)[:, None, None] * (num_faces + 1)
    corners = table.index_select(1, index.reshape(-1)).view(3, channels, batch, pixels)
    weights = fragments.bary.to(face_attrs.dtype)  # (B, H, W, 3)
    w0, w1, w2 = (weights[..., k].reshape(1, batch, pixels) for k in range(3))  # (1, B, H*W)
    values = torch.addcmul(torch.addcmul(corners[0] * w0, corners[1], w1), corners[2], w2)
    return values.view(channels, batch, height, width).permute(1, 2, 3, 0)  # (B, H, W, C)


def uv_map_from_fragments(fragments: Fragments, face_uvs: torch.Tensor) -> UVMap:
    """Fragments and (F, 3, 2) per-corner UVs (`uvs[faces]`) -> the UV map they show."""
    uv = interpolate(fragments, face_uvs)  # (B, H, W, 2)
    return UVMap(uv=uv, mask=fragments.mask, depth=fragments.depth)


def uv_map(
    verts: torch.Tensor, faces: torch.Tensor, face_uvs: torch.Tensor, height: int, width: int
) -> tuple[UVMap, Fragments]:
    """(B, V, 3) screen points -> the mesh's UV map, and the fragments it came from (kept for
    `pixel_motion`). face_uvs: (F, 3, 2) per-corner UVs, e.g. `uvs[faces]`."""
    if _compiled(verts) and not face_uvs.requires_grad and face_uvs.device.type == "cpu":
        # One pass makes the fragments and the UVs: the served frame's whole mesh -> UV step.
        check_inputs(verts, faces, height, width)
        face_idx, bary, depth, mask, uv = raster_cpu.rasterize_cpu(
            verts, faces, height, width, face_uvs
        )
        fragments = Fragments(face_idx=face_idx, bary=bary, depth=depth, mask=mask)
        assert uv is not None
        return UVMap(uv=uv.to(face_uvs.dtype), mask=mask, depth=depth), fragments
    fragments = rasterize(verts, faces, height, width)
    return uv_map_from_fragments(fragments, face_uvs), fragments


def pixel_motion(
    frag_b: Fragments,
    verts_a: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    frag_a: Fragments | None = None,
    depth_tolerance: float = DEPTH_TOLERANCE_REL,
) -> PixelMotion:
    """Where every pixel of frame B was in frame A, and whether frame A saw it there.

    frag_b: frame B's fragments; verts_a: (B, V, 3) frame A's screen points of the same mesh;
    height, width: frame A's image size; frag_a: frame A's fragments if already made (else they
    are rasterised here).

    Validity is a depth test at the taps a sample reads: frame B covers the pixel, and at each of
    the 2 x 2 pixel centres around the point's position in A whose bilinear weight along x and
    along y exceeds `TAP_WEIGHT_EPS`, frame A's depth is within `depth_tolerance` * depth of the
    point's own depth in A. An occluder in front, background (depth 0) and a tap off A's image
    all fail it, so a valid pixel's sample is never smeared, with "bilinear" or "nearest". It is
    conservative on rims seen edge-on: where A's depth changes by more than the tolerance within
    a pixel, those pixels are invalid although the same surface is there.
    """
    if frag_a is None:
        frag_a = rasterize(verts_a, faces, height, width)
    expected = (frag_b.mask.shape[0], height, width)
    if tuple(frag_a.mask.shape) != expected:
        raise ValueError(f"frag_a is {tuple(frag_a.mask.shape)}, expected {expected}")
    with torch.no_grad():
        point = interpolate(frag_b, verts_a.detach()[:, faces].float())  # (B, H, W, 3) in A
        px, py, pz = point.unbind(-1)  # (B, H, W) contiguous planes
        covered = frag_b.mask.to(point.dtype)[..., None]  # (B, H, W, 1) 1 or 0
        scale = torch.tensor([2.0 / width, 2.0 / height], device=point.device)  # (2,)
        # Uncovered pixels have point 0: adding covered - 2 sends them to OUTSIDE_GRID (-2).
        grid = point[..., :2] * scale + (covered - 2.0)  # (B, H, W, 2)
        worst = _worst_tap_error(px, py, pz, frag_a, depth_tolerance)  # (B, H, W)
        valid = frag_b.mask & (worst <= 0)
    return PixelMotion(grid=grid, valid=valid)


def _worst_tap_error(
    px: torch.Tensor, py: torch.Tensor, pz: torch.Tensor, frag_a: Fragments, tolerance: float
) -> torch.Tensor:
    """(B, H, W) largest |depth_a(tap) - pz| - tolerance * pz over the bilinear taps that count
    around (px, py) in frame A; <= 0 where every such tap shows the same surface."""
    batch, height, width = frag_a.mask.shape
    pad = TAP_PAD_PX
    # An empty (zero depth) border: taps off the image fail, and clamping a position far off the
    # image into the border keeps both of its taps inside the border.
    depth_a = F.pad(frag_a.depth, (pad, pad, pad, pad)).reshape(-1)  # (B*(H+2p)*(W+2p),)
    stride = width + 2 * pad
    u, v = px - 0.5, py - 0.5  # (B, H, W) continuous pixel coordinates, centres at integers
    col, row = torch.floor(u), torch.floor(v)  # (B, H, W) top-left tap
    frac_u, frac_v = u - col, v - row  # (B, H, W) in [0, 1)
    # A tap counts when its 1-D weight exceeds the epsilon; ceil(clamp(.)) makes that 1 or 0.
    right = torch.ceil((frac_u - TAP_WEIGHT_EPS).clamp_(0.0, 1.0))
    below = torch.ceil((frac_v - TAP_WEIGHT_EPS).clamp_(0.0, 1.0))
    left = torch.ceil((1.0 - TAP_WEIGHT_EPS - frac_u).clamp_(0.0, 1.0))
    above = torch.ceil((1.0 - TAP_WEIGHT_EPS - frac_v).clamp_(0.0, 1.0))
    base = (row.clamp_(-pad, height) + pad) * stride + col.clamp_(-pad, width) + pad  # (B, H, W)
    image_size = (height + 2 * pad) * stride
    base = base.long() + torch.arange(batch, device=px.device)[:, None, None] * image_size
    tolerance_z = pz * tolerance  # (B, H, W)
    worst = torch.full_like(pz, -float("inf"))
    for offset, counts_u, counts_v in (
        (0, left, above),
        (1, right, above),
        (stride, left, below),
        (stride + 1, right, below),
    ):
        tap_depth = depth_a.index_select(0, (base + offset).reshape(-1)).view_as(pz)
        error = (tap_depth - pz).abs_().sub_(tolerance_z).mul_(counts_u).mul_(counts_v)
        worst = torch.maximum(worst, error)
    return worst
