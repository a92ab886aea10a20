"""What the neural renderer sees of one frame: the UV map of the posed mesh, and the control vector.

One path for every source of controls (a live session, a captured frame, a benchmark trajectory):
head-model inputs -> mesh -> (optional novel-view orbit) -> camera -> UV map, plus the normalised
control vector the warp network embeds and the view direction the texture's spherical harmonics
use. Training therefore sees exactly what the live server will produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch3d.transforms import matrix_to_euler_angles

from engine.camera import Camera, project
from engine.controls import ANGLE_SCALE_DEG
from engine.head.model import (
    EULER_CONVENTION,
    HeadControls,
    HeadModel,
    orbit_vertices,
    pose_rotation,
)
from engine.render.raster import Fragments, uv_map

NUM_ANGLES = 5  # yaw, pitch, roll, view yaw, view pitch


def control_dim(num_expressions: int) -> int:
    return num_expressions + NUM_ANGLES


@dataclass(frozen=True)
class FrameInputs:
    """B frames at H x W.

    uv (B, H, W, 2) in [0, 1], zero where not covered; mask (B, H, W) bool;
    screen (B, V, 3) mesh screen points (pixels, depth), for the explicit warp's pixel motion;
    fragments the rasteriser's output for those screen points;
    controls (B, D) expression weights then angles / ANGLE_SCALE_DEG (D = E + 5);
    view_dir (B, 3) unit vector from the head centre to the camera, in head coordinates;
    framing (B, P) where a captured frame's crop sat in its source frame, normalised
    (engine/training/framing.py), or None: served frames sit at the training median;
    mirrored (B,) bool the training frames seen in a mirror (engine/training/mirror.py), whose
    background is flipped too, or None: none are.
    """

    uv: torch.Tensor
    mask: torch.Tensor
    screen: torch.Tensor
    fragments: Fragments
    controls: torch.Tensor
    view_dir: torch.Tensor
    framing: torch.Tensor | None = None
    mirrored: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.uv.shape[0])


def control_vector(expression: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """(B, E) weights and (B, 5) yaw, pitch, roll, view yaw, view pitch in degrees -> (B, E + 5)."""
    return torch.cat((expression, angles_deg / ANGLE_SCALE_DEG), dim=1)


def view_direction(
    rotation: torch.Tensor, centre: torch.Tensor, view_rotation: torch.Tensor
) -> torch.Tensor:
    """Unit direction from the head centre to the camera (at the world origin), in head coordinates.

    rotation (B, 3, 3) head rotation; centre (B, 3) head centre in the world; view_rotation
    (B, 3, 3) the novel-view orbit applied about the centre (it turns the head as the camera sees it).
    """
    to_camera = F.normalize(-centre, dim=-1)  # (B, 3) world
    total = view_rotation @ rotation  # (B, 3, 3) head -> world, orbit included
    return (total.transpose(1, 2) @ to_camera[..., None])[..., 0]  # (B, 3)


def screen_affine(screen: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Apply (B, 2, 3) pixel-space affines to the x, y of (B, V, 3) screen points (augmentation)."""
    xy1 = F.pad(screen[..., :2], (0, 1), value=1.0)  # (B, V, 3)
    xy = xy1 @ affine.transpose(1, 2)  # (B, V, 2)
    return torch.cat((xy, screen[..., 2:]), dim=-1)


def posed_mesh(
    head: HeadModel, controls: HeadControls, view_rotation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The control -> mesh step: (B, V, 3) world vertices, orbited about the head centre by
    view_rotation (B, 3, 3), and (B, 3) the head centres."""
    out = head(controls)
    return orbit_vertices(out.vertices, out.centre, view_rotation), out.centre


def inputs_from_mesh(
    head: HeadModel,
    verts: torch.Tensor,
    centre: torch.Tensor,
    controls: HeadControls,
    view_rotation: torch.Tensor,
    angles_deg: torch.Tensor,
    camera: Camera,
    resolution: int,
    affine: torch.Tensor | None = None,
) -> FrameInputs:
    """The mesh -> UV map step: project `verts` (B, V, 3), rasterise, and gather what the renderer
    sees (see `make_inputs`)."""
    screen = project(verts, camera, resolution, resolution)  # (B, V, 3)
    if affine is not None:
        screen = screen_affine(screen, affine)
    uv, fragments = uv_map(screen, head.faces, head.face_uvs, resolution, resolution)
    return FrameInputs(
        uv=uv.uv,
        mask=uv.mask,
        screen=screen,
        fragments=fragments,
        controls=control_vector(controls.expression, angles_deg),
        view_dir=view_direction(controls.rotation, centre, view_rotation),
    )


def make_inputs(
    head: HeadModel,
    controls: HeadControls,
    view_rotation: torch.Tensor,
    angles_deg: torch.Tensor,
    camera: Camera,
    resolution: int,
    affine: torch.Tensor | None = None,
) -> FrameInputs:
    """Head-model inputs (B) -> what the renderer sees.

    view_rotation (B, 3, 3) orbit about the head centre (identity for the captured view);
    angles_deg (B, 5) the angles that go into the control vector; affine (B, 2, 3) optional
    pixel-space transform of the projected mesh (training augmentation: the target image is moved
    by the same affine, so the two stay aligned)."""
    verts, centre = posed_mesh(head, controls, view_rotation)
    return inputs_from_mesh(
        head, verts, centre, controls, view_rotation, angles_deg, camera, resolution, affine
    )


def capture_inputs(
    head: HeadModel,
    expression: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    angles_deg: torch.Tensor,
    camera: Camera,
    resolution: int,
    affine: torch.Tensor | None = None,
) -> FrameInputs:
    """Captured frames -> what the renderer sees, from their controls alone (as served): expression
    (B, E), head rotation (B, 3, 3) and translation (B, 3) where the crop shows it, angles (B, 5)."""
    b = expression.shape[0]
    dev = head.v_template.device
    zeros3 = torch.zeros(b, 3, device=dev)
    controls = HeadControls(
        expression=expression.to(dev),
        rotation=rotation.to(dev),
        translation=translation.to(dev),
        jaw=zeros3,
        neck=zeros3.clone(),
    )
    eye = torch.eye(3, device=dev).expand(b, 3, 3)
    moved = None if affine is None else affine.to(dev)
    return make_inputs(head, controls, eye, angles_deg.to(dev), camera, resolution, moved)


def random_affines(
    batch: int, resolution: int, max_shift_px: float, max_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, 2, 3) random zoom about the image centre and shift, in pixels: small enough that the
    face stays in frame, large enough that the networks cannot memorise pixel positions."""
    scale = 1.0 + (torch.rand(batch, generator=generator) * 2 - 1) * max_scale  # (B,)
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * max_shift_px  # (B, 2)
    centre = resolution / 2.0
    affine = torch.zeros(batch, 2, 3)
    affine[:, 0, 0] = scale
    affine[:, 1, 1] = scale
    affine[:, :, 2] = centre * (1 - scale)[:, None] + shift
    return affine


def warp_image(image: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Move (B, C, H, W) images by the same pixel-space affines as `screen_affine` moves the mesh,
    so that a target and its UV map stay aligned. Outside the source: edge pixels repeated."""
    b, _, h, w = image.shape
    # Output pixel p shows source pixel A^-1 p; grid_sample wants normalised source coordinates.
    full = torch.eye(3).repeat(b, 1, 1)
    full[:, :2] = affine
    inv = torch.linalg.inv(full)  # (B, 3, 3) output pixels -> source pixels
    to_norm = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]])
    theta = (to_norm @ inv @ torch.linalg.inv(to_norm))[:, :2]  # (B, 2, 3) normalised coords
    grid = F.affine_grid(theta.to(image.dtype), [b, 1, h, w], align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def facing_rotation(centre: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(..., 3) head centres in the world -> (..., 3, 3) the rotation (a yaw, then a pitch; no
    roll) that turns a head there from looking down the camera's axis to looking at the camera.

    A head off the camera's axis is seen from the side: in the talking clip's crops the man sits
    7 degrees off it, so his world yaw 0 shows him turned 7 degrees away. Served poses are the
    viewer's (`Avatar.inputs`): yaw 0 looks at the person watching."""
    rot = torch.tensor(camera.rotation, dtype=centre.dtype, device=centre.device)
    trans = torch.tensor(camera.translation, dtype=centre.dtype, device=centre.device)
    eye = -rot.T @ trans  # (3,) the camera's centre in the world
    axis = -rot[2]  # (3,) world direction from the camera's view back towards it (head forward)
    to_camera = F.normalize(eye - centre, dim=-1)  # (..., 3)
    # The yaw and pitch that take the head's forward (+z, the axis' reverse) to `to_camera`,
    # measured in the frame where the axis is +z (the identity for the capture's GL camera).
    frame = _axis_frame(axis)  # (3, 3) rows: that frame's x, y, z in the world
    local = to_camera @ frame.T  # (..., 3)
    yaw = torch.atan2(local[..., 0], local[..., 2])
    pitch = -torch.asin(local[..., 1].clamp(-1.0, 1.0))
    turn = pose_rotation(torch.rad2deg(yaw), torch.rad2deg(pitch), torch.zeros_like(yaw))
    return frame.T @ turn @ frame


def seen_rotation(rotation: torch.Tensor, centre: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(..., 3, 3) world head rotations of heads at (..., 3) centres -> the poses the camera sees,
    in the viewer's frame (`facing_rotation`'s inverse applied): what a served pose means."""
    return facing_rotation(centre, camera).transpose(-1, -2) @ rotation


def _axis_frame(axis: torch.Tensor) -> torch.Tensor:
    """(3,) a unit forward direction -> (3, 3) rows x, y, z of a right-handed frame with z along
    it and y as close to the world's +y as it allows."""
    up = torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype, device=axis.device)
    x = F.normalize(torch.linalg.cross(up, axis), dim=0)
    y = torch.linalg.cross(axis, x)
    return torch.stack((x, y, axis))


def angles_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B, 5) yaw, pitch, roll in degrees and a zero view orbit."""
    ypr = matrix_to_euler_angles(rotation, EULER_CONVENTION) * (180.0 / math.pi)  # (B, 3)
    return F.pad(ypr, (0, 2))
