"""Renderer inputs: augmentation keeps UV map and target aligned; view direction and controls."""

from __future__ import annotations

import torch

from engine.camera import Camera
from engine.head.default import build_default_head
from engine.head.model import HeadModel, pose_rotation
from engine.render.frame_inputs import make_inputs, random_affines, view_direction, warp_image

RES = 96


def _inputs(head: HeadModel, affine: torch.Tensor | None = None):
    c = head.neutral_controls(batch=2, translation=torch.tensor([0.0, 0.0, -60.0]))
    angles = torch.zeros(2, 5)
    return make_inputs(
        head, c, torch.eye(3).expand(2, 3, 3), angles, Camera(fx=2.4, fy=2.4), RES, affine
    )


def test_affine_moves_uv_map_and_image_alike() -> None:
    head = HeadModel(build_default_head())
    plain = _inputs(head)
    affine = random_affines(
        2, RES, max_shift_px=6.0, max_scale=0.08, generator=torch.Generator().manual_seed(0)
    )
    moved = _inputs(head, affine)
    # Warping the plain UV map as an image must give the UV map rasterised from the moved mesh.
    image = torch.cat((plain.uv.permute(0, 3, 1, 2), plain.mask[:, None].float()), dim=1)
    warped = warp_image(image, affine)
    inside = moved.mask & (warped[:, 2] > 0.999)  # away from the silhouette's blended edge
    # ... and from UV seams (the mouth strip has a texture region of its own), where bilinear
    # warping of a UV image blends two distant UVs.
    uv = plain.uv.permute(0, 3, 1, 2)  # (B, 2, H, W)
    jump = torch.zeros(uv.shape[0], RES, RES)  # (B, H, W) largest UV step to a neighbour
    jump[..., :, 1:] = (uv[..., :, 1:] - uv[..., :, :-1]).abs().amax(1)
    jump[..., 1:, :] = torch.maximum(
        jump[..., 1:, :], (uv[..., 1:, :] - uv[..., :-1, :]).abs().amax(1)
    )
    seam = torch.nn.functional.max_pool2d((jump > 0.05).float()[:, None], 7, 1, 3)[:, 0] > 0
    inside &= ~warp_image(seam[:, None].float(), affine)[:, 0].gt(0)
    assert inside.float().mean() > 0.15
    err = (warped[:, :2].permute(0, 2, 3, 1) - moved.uv).abs().amax(-1)[inside]
    assert float(err.median()) < 2e-3 and float(err.quantile(0.99)) < 0.02


def test_control_vector_and_view_direction() -> None:
    head = HeadModel(build_default_head())
    x = _inputs(head)
    assert x.controls.shape == (2, head.num_expressions + 5)
    # A head facing the camera sees it straight ahead (+z in head coordinates).
    torch.testing.assert_close(x.view_dir, torch.tensor([[0.0, 0.0, 1.0]] * 2), atol=0.15, rtol=0)
    turned = view_direction(
        pose_rotation(torch.tensor([30.0]), torch.zeros(1), torch.zeros(1)),
        torch.tensor([[0.0, 0.0, -60.0]]),
        torch.eye(3)[None],
    )
    assert turned[0, 0] < -0.4  # the face turned to +x sees the camera on its -x side
