"""engine.render.raster: the fast rasteriser against the plain reference, UV maps, and pixel motion."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from engine.camera import Camera, project
from engine.head.canonical_mesh import load_canonical_mesh
from engine.render.raster import (
    OUTSIDE_GRID,
    Fragments,
    interpolate,
    pixel_motion,
    rasterize,
    rasterize_torch,
    uv_map,
)
from engine.render.raster_cpu import available as compiled_available
from engine.render.raster_reference import (
    pytorch3d_available,
    rasterize_pytorch3d,
    rasterize_reference,
)

HEAD_DEPTH_CM = 60.0  # the head sits this far in front of the camera
FOCAL = 3.2  # focal length in image widths: the face fills about two thirds of the image
POSES = {  # name: (yaw, pitch, roll) in degrees
    "frontal": (0.0, 0.0, 0.0),
    "turned": (30.0, -10.0, 5.0),
    "tilted": (-15.0, 20.0, -12.0),
    "profile": (70.0, 0.0, 0.0),  # the nose hides part of the far cheek: a real z-buffer test
}


def face_mesh() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(V, 3) canonical vertices in cm, (F, 3) faces, (F, 3, 2) per-corner UVs."""
    mesh = load_canonical_mesh()
    faces = torch.from_numpy(mesh.faces)
    return torch.from_numpy(mesh.vertices), faces, torch.from_numpy(mesh.uvs)[faces]


def rotation(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """(3, 3) rotation from degrees about y (yaw), x (pitch) and z (roll)."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = torch.tensor([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def posed_screen(
    verts: torch.Tensor,
    pose: tuple[float, float, float],
    size: int,
    shift_cm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """Canonical vertices -> (1, V, 3) screen points of the posed head in a size x size image."""
    world = (
        verts @ rotation(*pose).T + torch.tensor(shift_cm) + torch.tensor([0, 0, -HEAD_DEPTH_CM])
    )
    return project(world, Camera(fx=FOCAL, fy=FOCAL), size, size)[None]


def random_triangles(
    generator: torch.Generator, batch: int, count: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent random triangles, overlapping, of both windings, some partly off-screen."""
    centres = torch.rand(batch, count, 1, 2, generator=generator) * torch.tensor([width, height])
    spread = (torch.rand(batch, count, 3, 2, generator=generator) - 0.5) * 30.0  # up to 15 px
    xy = (centres + spread).view(batch, count * 3, 2)  # some corners beyond the image border
    z = 1.0 + 9.0 * torch.rand(batch, count * 3, 1, generator=generator)
    faces = torch.arange(count * 3).view(count, 3)
    return torch.cat((xy, z), -1), faces


# Both rasterisers on this machine: the compiled CPU one `rasterize` takes here (when Numba loads)
# and the PyTorch one CUDA takes; each is held to the reference by the same rules.
IMPLEMENTATIONS = {"rasterize": rasterize, "rasterize_torch": rasterize_torch}
Rasterize = Callable[[torch.Tensor, torch.Tensor, int, int], Fragments]


def agreement(fast: Fragments, ref: Fragments) -> tuple[float, float, torch.Tensor]:
    """Mask IoU, fraction of same faces where both cover, and the mask of those pixels."""
    both = fast.mask & ref.mask
    iou = both.sum().item() / max(1, (fast.mask | ref.mask).sum().item())
    same = both & (fast.face_idx == ref.face_idx)
    return iou, same.sum().item() / max(1, both.sum().item()), same


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_random_triangles_match_reference(impl: str) -> None:
    raster: Rasterize = IMPLEMENTATIONS[impl]
    generator = torch.Generator().manual_seed(0)
    verts, faces = random_triangles(generator, batch=2, count=40, height=48, width=64)
    fast = raster(verts, faces, 48, 64)
    ref = rasterize_reference(verts, faces, 48, 64)
    iou, same_face, same = agreement(fast, ref)
    assert 0.4 < fast.mask.float().mean() < 0.95  # a busy scene, with some background left
    seen = sum(fast.face_idx[b][fast.mask[b]].unique().numel() for b in range(2))
    assert seen > 0.6 * 2 * 40  # most triangles show somewhere: they overlap, not stack
    assert iou >= 0.99
    assert same_face >= 0.99
    assert (fast.bary - ref.bary)[same].abs().max() < 1e-4
    assert (fast.depth - ref.depth)[same].abs().max() < 1e-4
    assert torch.equal(fast.face_idx == -1, ~fast.mask)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("pose", list(POSES))
def test_face_mesh_matches_reference(pose: str, impl: str) -> None:
    verts, faces, face_uvs = face_mesh()
    screen = posed_screen(verts, POSES[pose], 128)
    fast = IMPLEMENTATIONS[impl](screen, faces, 128, 128)
    ref = rasterize_reference(screen, faces, 128, 128)
    iou, same_face, same = agreement(fast, ref)
    assert fast.mask.float().mean() > 0.2
    assert iou >= 0.99
    assert same_face >= 0.98
    uv_error = (interpolate(fast, face_uvs) - interpolate(ref, face_uvs))[same].abs()
    assert uv_error.mean() < 1e-4
    assert uv_error.max() < 1e-3


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_face_mesh_at_256_batched_matches_reference(impl: str) -> None:
    raster: Rasterize = IMPLEMENTATIONS[impl]
    verts, faces, _ = face_mesh()
    screen = torch.cat([posed_screen(verts, POSES[p], 256) for p in ("frontal", "turned")])
    fast = raster(screen, faces, 256, 256)
    ref = rasterize_reference(screen, faces, 256, 256)
    iou, same_face, _ = agreement(fast, ref)
    assert 0.55 < fast.mask[0].float().mean() < 0.75  # the bench's "face fills 60-70%" framing
    assert iou >= 0.999
    assert same_face >= 0.99
    for b in range(2):  # a batch is the same as its images one by one
        single = raster(screen[b : b + 1], faces, 256, 256)
        assert torch.equal(single.face_idx[0], fast.face_idx[b])


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_shared_edges_leave_no_cracks(impl: str) -> None:
    """A jittered grid mesh whose outline is a rectangle through pixel centres covers every
    centre of the rectangle: spans of neighbouring triangles meet exactly."""
    raster: Rasterize = IMPLEMENTATIONS[impl]
    generator = torch.Generator().manual_seed(1)
    cells, cell_px = 12, 7
    ij = torch.stack(
        torch.meshgrid(torch.arange(cells + 1), torch.arange(cells + 1), indexing="ij")
    )
    xy = ij.flip(0).reshape(2, -1).T.float() * cell_px + 3.5  # (V, 2) corners on pixel centres
    inner = ((ij > 0) & (ij < cells)).all(0).reshape(-1)
    xy[inner] += (torch.rand(int(inner.sum()), 2, generator=generator) - 0.5) * cell_px * 0.8
    z = 5.0 + torch.rand(xy.shape[0], 1, generator=generator)
    verts = torch.cat((xy, z), 1)[None]  # (1, V, 3)
    quads = [
        (i * (cells + 1) + j, i * (cells + 1) + j + 1) for i in range(cells) for j in range(cells)
    ]
    faces = torch.tensor(
        [t for a, b in quads for t in ((a, b, a + cells + 1), (b, b + cells + 1, a + cells + 1))]
    )
    frags = raster(verts, faces, 96, 96)
    lo, hi = 3, 3 + cells * cell_px  # the outline's first and last pixel row / column
    assert frags.mask[0, lo : hi + 1, lo : hi + 1].all()
    assert frags.mask.sum() == (hi - lo + 1) ** 2
    ref = rasterize_reference(verts, faces, 96, 96)
    assert torch.equal(frags.mask, ref.mask)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_single_triangle_known_coverage(impl: str) -> None:
    raster: Rasterize = IMPLEMENTATIONS[impl]
    # Right triangle (0, 0), (8, 0), (0, 8): the centre of pixel (i, j) is inside iff i + j <= 7.
    corners = torch.tensor([[0.0, 0.0, 5.0], [8.0, 0.0, 5.0], [0.0, 8.0, 5.0]])
    rows, cols = torch.meshgrid(torch.arange(10), torch.arange(12), indexing="ij")
    expected = rows + cols <= 7
    for faces in (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])):  # both windings
        frags = raster(corners[None], faces, 10, 12)
        assert torch.equal(frags.mask[0], expected)
        assert expected.sum() == 36
        assert torch.allclose(frags.depth[0][expected], torch.tensor(5.0))
        assert torch.equal(frags.depth[0][~expected], torch.zeros(int((~expected).sum())))
        assert torch.allclose(frags.bary[0].sum(-1)[expected], torch.tensor(1.0))
        # Pixel (0, 0) is centred at (0.5, 0.5): 1/16 towards each of the two far corners.
        w = frags.bary[0, 0, 0]
        assert torch.allclose(w[faces[0]], torch.tensor([0.875, 0.0625, 0.0625]))


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_off_screen_and_behind_camera_are_empty(impl: str) -> None:
    raster: Rasterize = IMPLEMENTATIONS[impl]
    verts, faces, _ = face_mesh()
    off_screen = posed_screen(verts, POSES["frontal"], 64) + torch.tensor([500.0, 0.0, 0.0])
    behind = posed_screen(verts, POSES["frontal"], 64) * torch.tensor([1.0, 1.0, -1.0])
    for screen in (off_screen, behind):
        frags = raster(screen, faces, 64, 64)
        assert not frags.mask.any()
        assert (frags.face_idx == -1).all()
        assert (frags.bary == 0).all() and (frags.depth == 0).all()


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_degenerate_triangles_are_ignored(impl: str) -> None:
    raster: Rasterize = IMPLEMENTATIONS[impl]
    corners = [
        *([1.0, 1.0, 5.0], [15.0, 1.0, 5.0], [1.0, 15.0, 5.0]),  # a real triangle, behind
        *([0.5, 4.5, 1.0], [16.5, 4.5, 1.0], [8.5, 4.5, 1.0]),  # collinear on centres, in front
        *([6.5, 6.5, 1.0], [6.5, 6.5, 1.0], [6.5, 6.5, 1.0]),  # a point on a centre
        *([2.0, 2.0, float("nan")], [9.0, 2.0, 1.0], [2.0, 9.0, 1.0]),  # not finite
    ]
    verts = torch.tensor([corners])
    faces = torch.arange(12).view(4, 3)
    frags = raster(verts, faces, 16, 16)
    assert set(frags.face_idx.unique().tolist()) == {-1, 0}
    assert torch.equal(frags.mask, rasterize_reference(verts, faces, 16, 16).mask)


def test_interpolate_constant_and_linear_attributes() -> None:
    verts, faces, _ = face_mesh()
    screen = posed_screen(verts, POSES["turned"], 96)
    frags = rasterize(screen, faces, 96, 96)
    constant = torch.full((faces.shape[0], 3, 3), 3.25)
    values = interpolate(frags, constant)  # (1, H, W, 3)
    assert values.shape == (1, 96, 96, 3)
    assert torch.allclose(values[frags.mask], torch.tensor(3.25), atol=1e-5)
    assert (values[~frags.mask] == 0).all()
    # Screen x and y are affine over a triangle, so interpolation gives back the pixel centre.
    corner_xy = screen[:, faces, :2]  # (1, F, 3, 2), per-image attributes
    xy = interpolate(frags, corner_xy)  # (1, H, W, 2)
    rows, cols = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    centres = torch.stack((cols + 0.5, rows + 0.5), -1)[None]
    assert (xy - centres)[frags.mask].abs().max() < 1e-3


def test_uv_map_and_its_grid() -> None:
    verts, faces, face_uvs = face_mesh()
    screen = posed_screen(verts, POSES["frontal"], 64)
    uv, frags = uv_map(screen, faces, face_uvs, 64, 64)
    assert uv.uv.shape == (1, 64, 64, 2) and torch.equal(uv.mask, frags.mask)
    assert uv.uv.min() >= 0 and uv.uv.max() <= 1
    assert (uv.uv[~uv.mask] == 0).all()
    grid = uv.grid()
    assert torch.allclose(grid[uv.mask], uv.uv[uv.mask] * 2 - 1)
    assert (grid[~uv.mask] == OUTSIDE_GRID).all()
    # Sampling a texture through the grid gives zero outside the face.
    texture = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) + 1.0
    sampled = F.grid_sample(texture, grid, align_corners=False)
    assert (sampled.permute(0, 2, 3, 1)[~uv.mask] == 0).all()
    assert (sampled.permute(0, 2, 3, 1)[uv.mask] > 0).all()


def test_pixel_motion_identity() -> None:
    verts, faces, _ = face_mesh()
    screen = posed_screen(verts, POSES["turned"], 128)
    frags = rasterize(screen, faces, 128, 128)
    motion = pixel_motion(frags, screen, faces, 128, 128, frag_a=frags)
    rows, cols = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    centres = torch.stack((2 * (cols + 0.5) / 128 - 1, 2 * (rows + 0.5) / 128 - 1), -1)[None]
    assert (motion.grid - centres)[frags.mask].abs().max() < 1e-4
    assert (motion.grid[~frags.mask] == OUTSIDE_GRID).all()
    assert torch.equal(motion.valid, frags.mask)
    # Rasterising frame A inside pixel_motion gives the same answer.
    assert torch.equal(pixel_motion(frags, screen, faces, 128, 128).valid, motion.valid)


@pytest.mark.parametrize(
    ("mode", "mean_bound", "p99_bound"), [("bilinear", 5e-4, 5e-3), ("nearest", 5e-3, 2e-2)]
)
def test_pixel_motion_warps_frame_a_onto_frame_b(
    mode: str, mean_bound: float, p99_bound: float
) -> None:
    verts, faces, face_uvs = face_mesh()
    size = 192
    screen_a = posed_screen(verts, (10.0, -5.0, 0.0), size)
    screen_b = posed_screen(verts, (14.0, -3.0, 2.0), size, shift_cm=(0.5, -0.3, 1.0))
    uv_a, frag_a = uv_map(screen_a, faces, face_uvs, size, size)
    uv_b, frag_b = uv_map(screen_b, faces, face_uvs, size, size)
    motion = pixel_motion(frag_b, screen_a, faces, size, size, frag_a=frag_a)
    assert motion.valid.sum() >= 0.85 * frag_b.mask.sum()  # nearly all of B is seen in A
    warped = F.grid_sample(uv_a.uv.permute(0, 3, 1, 2), motion.grid, mode=mode, align_corners=False)
    error = (warped.permute(0, 2, 3, 1) - uv_b.uv)[motion.valid].abs()
    assert error.mean() < mean_bound
    assert torch.quantile(error.flatten(), 0.99) < p99_bound
    # PixelMotion.warp zeroes what is not valid.
    warped_masked = motion.warp(uv_a.uv.permute(0, 3, 1, 2), mode=mode)
    assert (warped_masked.permute(0, 2, 3, 1)[~motion.valid] == 0).all()


def occluder_scene(occluder_x: float) -> torch.Tensor:
    """A quad at depth 10 over pixels 8..56 and a triangle at depth 5 shifted by occluder_x."""
    quad = [[8.0, 8.0, 10.0], [56.0, 8.0, 10.0], [56.0, 56.0, 10.0], [8.0, 56.0, 10.0]]
    triangle = [
        [4.0 + occluder_x, 4.0, 5.0],
        [32.0 + occluder_x, 4.0, 5.0],
        [4.0 + occluder_x, 32.0, 5.0],
    ]
    return torch.tensor([quad + triangle])


def test_pixel_motion_marks_occluded_and_off_image_points_invalid() -> None:
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    verts_a = occluder_scene(0.0)  # the triangle hides the quad's top-left corner in A
    verts_b = occluder_scene(500.0)  # and has left the image in B
    frag_b = rasterize(verts_b, faces, 64, 64)
    motion = pixel_motion(frag_b, verts_a, faces, 64, 64)
    rows, cols = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    quad_inside = (rows > 10) & (rows < 54) & (cols > 10) & (cols < 54)  # 2 px from its edges
    under_occluder = (rows > 4) & (cols > 4) & (rows + cols < 36 - 2)  # 2 px inside the triangle
    clear = (rows + cols > 36 + 2) & quad_inside
    assert frag_b.mask[0][quad_inside].all()
    assert not motion.valid[0][quad_inside & under_occluder].any()
    assert motion.valid[0][clear].all()

    # Frame A moved right by half the image: B's right half maps off A's image.
    shifted_a = verts_b + torch.tensor([32.0, 0.0, 0.0])
    motion = pixel_motion(frag_b, shifted_a, faces, 64, 64)
    off_image = quad_inside & (cols > 33)  # lands beyond A's last column (64 - 32 = 32, + 1 px)
    on_image = quad_inside & (cols < 22)  # lands at A's columns < 54, still inside the quad
    assert not motion.valid[0][off_image].any()
    assert motion.valid[0][on_image].all()


def test_no_gradients_through_rasteriser_but_through_attributes() -> None:
    verts, faces, face_uvs = face_mesh()
    with torch.inference_mode():  # cached tensors made here must serve autograd calls later
        rasterize(posed_screen(verts, POSES["frontal"], 37), faces, 37, 41)
    screen = posed_screen(verts, POSES["frontal"], 37).requires_grad_(True)
    frags = rasterize(screen, faces, 37, 41)
    assert not frags.bary.requires_grad and not frags.depth.requires_grad
    attrs = face_uvs.clone().requires_grad_(True)
    interpolate(frags, attrs).sum().backward()
    assert attrs.grad is not None and attrs.grad.abs().sum() > 0


@pytest.mark.skipif(not compiled_available(), reason="Numba does not load here")
def test_the_compiled_rasteriser_is_the_torch_one() -> None:
    """Same per-triangle arithmetic, same rules: the same winners at every pixel of the face mesh
    in every pose, and float32 barycentrics and depths within rounding."""
    verts, faces, _ = face_mesh()
    screen = torch.cat([posed_screen(verts, POSES[p], 256) for p in POSES])
    compiled = rasterize(screen, faces, 256, 256)
    plain = rasterize_torch(screen, faces, 256, 256)
    assert torch.equal(compiled.face_idx, plain.face_idx)
    assert torch.equal(compiled.mask, plain.mask)
    assert (compiled.bary - plain.bary).abs().max() < 1e-5
    assert (compiled.depth - plain.depth).abs().max() < 1e-5
    assert compiled.bary.permute(3, 0, 1, 2).is_contiguous()  # channels-first underneath
    with pytest.raises(ValueError, match=r"faces index vertices 0\.\.467"):
        rasterize(screen[:1], faces.clamp(max=467) + 1, 64, 64)
    # A corner projected far past the image (near the camera plane) clips like the torch one's.
    huge = torch.tensor([[[5.0, 5.0, 2.0], [3e20, 8.0, 2.0], [6.0, -4e19, 2.0], [2.0, 30.0, 3.0]]])
    for far in (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 3], [0, 2, 3]])):
        a, b = rasterize(huge, far, 32, 32), rasterize_torch(huge, far, 32, 32)
        assert torch.equal(a.face_idx, b.face_idx) and a.mask.any()
    # uv_map's single pass (fragments and UVs together) gives what interpolating them gives.
    face_uvs = torch.from_numpy(load_canonical_mesh().uvs)[faces]
    uv, fragments = uv_map(screen, faces, face_uvs, 256, 256)
    assert torch.equal(fragments.face_idx, plain.face_idx)
    assert (uv.uv - interpolate(plain, face_uvs)).abs().max() < 1e-5
    assert uv.uv.permute(3, 0, 1, 2).is_contiguous() and torch.equal(uv.mask, plain.mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu() -> None:
    verts, faces, _ = face_mesh()
    screen = torch.cat([posed_screen(verts, POSES[p], 256) for p in ("frontal", "profile")])
    cpu = rasterize(screen, faces, 256, 256)
    cuda = rasterize(screen.cuda(), faces.cuda(), 256, 256)
    on_cpu = Fragments(cuda.face_idx.cpu(), cuda.bary.cpu(), cuda.depth.cpu(), cuda.mask.cpu())
    iou, same_face, same = agreement(cpu, on_cpu)
    assert iou >= 0.999 and same_face >= 0.999
    assert (cpu.bary - on_cpu.bary)[same].abs().max() < 1e-4


@pytest.mark.skipif(
    not pytorch3d_available(),
    reason="PyTorch3D's compiled extension (pytorch3d._C) does not load with this torch build",
)
def test_pytorch3d_matches() -> None:
    verts, faces, face_uvs = face_mesh()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    screen = torch.cat([posed_screen(verts, POSES[p], 128) for p in ("frontal", "profile")])
    screen, faces = screen.to(device), faces.to(device)
    fast = rasterize(screen, faces, 128, 160)  # non-square, to check the NDC aspect handling
    theirs = rasterize_pytorch3d(screen, faces, 128, 160)
    iou, same_face, same = agreement(fast, theirs)
    assert iou >= 0.99
    assert same_face >= 0.98
    uv_error = interpolate(fast, face_uvs.to(device)) - interpolate(theirs, face_uvs.to(device))
    assert uv_error[same].abs().mean() < 1e-4
