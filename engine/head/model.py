"""FLAME-style parametric head: controls -> mesh vertices, batched, differentiable, CPU or CUDA.

v_shaped = template + shapedirs . shape + exprdirs . expression
joints   = j_regressor @ v_shaped
v_posed  = v_shaped + posedirs . (R_j - I) over the non-root joints (pose correctives)
v_skin   = linear blend skinning of v_posed over the kinematic tree (neck, jaw, eyes, ...)
vertices = R_head @ v_skin + t_head

The head rotation is applied about the model origin, after skinning, rather than through the
root joint as FLAME does: a captured MediaPipe pose is defined about the canonical mesh origin, so
this keeps captured poses exact; for a FLAME file the two differ by a translation only.
Novel views (`orbit_vertices`) rotate the output about the head centre, which the seed paper found
to generalise better than extreme joint angles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pytorch3d.transforms import axis_angle_to_matrix, euler_angles_to_matrix
from torch import nn

from engine.head.data import HeadModelData

EULER_CONVENTION = "YXZ"  # yaw about +y (up), then pitch about +x (right), then roll about +z
DEG = math.pi / 180.0


@dataclass(frozen=True)
class HeadControls:
    """What drives the head, batched over B.

    expression  (B, E) blendshape weights (the default head's are ARKit scores in [0, 1])
    rotation    (B, 3, 3) head rotation, model -> world
    translation (B, 3) head translation in model units
    jaw         (B, 3) axis-angle of the jaw joint, radians (ignored if the model has no jaw)
    neck        (B, 3) axis-angle of the neck joint, radians (ignored if no neck)
    shape       (B, S) identity coefficients, or None for the template identity
    """

    expression: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    jaw: torch.Tensor
    neck: torch.Tensor
    shape: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.expression.shape[0])


@dataclass(frozen=True)
class HeadOutput:
    """vertices (B, V, 3) in world units; joints (B, J, 3) posed joint positions;
    centre (B, 3) the head centre in world coordinates (the orbit pivot)."""

    vertices: torch.Tensor
    joints: torch.Tensor
    centre: torch.Tensor


def pose_rotation(
    yaw_deg: torch.Tensor, pitch_deg: torch.Tensor, roll_deg: torch.Tensor
) -> torch.Tensor:
    """(B,) angles in degrees -> (B, 3, 3). Positive yaw turns the face towards image right
    (world +x), positive pitch turns it down, positive roll tilts its top towards image left."""
    angles = torch.stack((yaw_deg, pitch_deg, roll_deg), dim=-1) * DEG  # (B, 3)
    return euler_angles_to_matrix(angles, EULER_CONVENTION)


def orbit_vertices(
    vertices: torch.Tensor, centre: torch.Tensor, view_rotation: torch.Tensor
) -> torch.Tensor:
    """Rotate (B, V, 3) vertices about (B, 3) centres by (B, 3, 3): a camera orbit for novel views."""
    c = centre[:, None, :]  # (B, 1, 3)
    return (vertices - c) @ view_rotation.transpose(1, 2) + c


def rigid_transforms(
    rotations: torch.Tensor, joints: torch.Tensor, parents: list[int]
) -> torch.Tensor:
    """World transforms of every joint for skinning.

    rotations (B, J, 3, 3) local joint rotations; joints (B, J, 3) rest positions.
    Returns (B, J, 4, 4) transforms that map a rest-pose point to its posed position.
    """
    b, j = joints.shape[:2]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]  # (B, J, 3) offsets from parents
    local = torch.zeros(b, j, 4, 4, dtype=joints.dtype, device=joints.device)
    local[:, :, :3, :3] = rotations
    local[:, :, :3, 3] = rel
    local[:, :, 3, 3] = 1.0
    chain = [local[:, 0]]
    for i in range(1, j):  # J is tiny (5 for FLAME); the tree walk is sequential by nature
        chain.append(chain[parents[i]] @ local[:, i])
    world = torch.stack(chain, dim=1)  # (B, J, 4, 4)
    # Remove the rest position so the transform applies to rest-pose points, not joint offsets.
    rest = torch.einsum("bjmn,bjn->bjm", world[:, :, :3, :3], joints)  # (B, J, 3)
    out = world.clone()
    out[:, :, :3, 3] = world[:, :, :3, 3] - rest
    return out


class HeadModel(nn.Module):
    """Evaluates a HeadModelData. One instance per device; it holds no per-session state."""

    v_template: torch.Tensor
    shapedirs: torch.Tensor
    exprdirs: torch.Tensor
    exprdirs_flat: torch.Tensor
    template_flat: torch.Tensor
    posedirs: torch.Tensor
    j_regressor: torch.Tensor
    lbs_weights: torch.Tensor
    faces: torch.Tensor
    face_uvs: torch.Tensor
    template_centre: torch.Tensor
    jaw_from_expression: torch.Tensor | None

    def __init__(self, data: HeadModelData) -> None:
        super().__init__()
        self.data = data
        f32 = torch.float32
        self.register_buffer("v_template", torch.as_tensor(data.v_template, dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(data.shapedirs, dtype=f32))
        self.register_buffer("exprdirs", torch.as_tensor(data.exprdirs, dtype=f32))
        # (E, 3V) and (3V,) copies so that blendshapes are one addmm per frame, not an einsum.
        e = data.exprdirs.shape[2]
        flat_dirs = np.ascontiguousarray(data.exprdirs.transpose(2, 0, 1).reshape(e, -1))
        self.register_buffer("exprdirs_flat", torch.as_tensor(flat_dirs, dtype=f32))
        self.register_buffer(
            "template_flat", torch.as_tensor(data.v_template.reshape(-1), dtype=f32)
        )
        self.register_buffer("posedirs", torch.as_tensor(data.posedirs, dtype=f32))
        self.register_buffer("j_regressor", torch.as_tensor(data.j_regressor, dtype=f32))
        self.register_buffer("lbs_weights", torch.as_tensor(data.lbs_weights, dtype=f32))
        self.register_buffer("faces", torch.as_tensor(data.faces, dtype=torch.int64))
        self.register_buffer("face_uvs", torch.as_tensor(data.face_uvs, dtype=f32))
        lo, hi = data.v_template.min(axis=0), data.v_template.max(axis=0)
        jaw_map = data.jaw_from_expression
        rig = (
            torch.as_tensor(jaw_map, dtype=f32) if jaw_map is not None and np.any(jaw_map) else None
        )
        self.register_buffer("jaw_from_expression", rig)
        self.register_buffer("template_centre", torch.as_tensor((lo + hi) / 2, dtype=f32))
        self.parents = [int(p) for p in data.parents]
        names = list(data.joint_names)
        self.jaw_index = names.index("jaw") if "jaw" in names else None
        self.neck_index = names.index("neck") if "neck" in names else None
        # Skipping all-zero correctives saves a (B, 9(J-1)) x (9(J-1), 3V) matmul per frame.
        self.has_pose_correctives = bool(np.any(data.posedirs))
        self.expression_names = data.expression_names

    @property
    def num_expressions(self) -> int:
        return len(self.data.expression_names)

    def neutral_controls(
        self, batch: int = 1, translation: torch.Tensor | None = None
    ) -> HeadControls:
        """Zero expression, identity rotation, the given (or zero) translation."""
        dev = self.v_template.device
        eye = torch.eye(3, device=dev).expand(batch, 3, 3).clone()
        t = (
            torch.zeros(batch, 3, device=dev)
            if translation is None
            else translation.expand(batch, 3).clone()
        )
        zeros3 = torch.zeros(batch, 3, device=dev)
        return HeadControls(
            expression=torch.zeros(batch, self.num_expressions, device=dev),
            rotation=eye,
            translation=t,
            jaw=zeros3,
            neck=zeros3.clone(),
        )

    def forward(self, controls: HeadControls) -> HeadOutput:
        b = controls.batch_size
        if controls.expression.shape != (b, self.num_expressions):
            raise ValueError(
                f"expression must be ({b}, {self.num_expressions}), got {tuple(controls.expression.shape)}"
            )
        num_v = self.v_template.shape[0]
        v = torch.addmm(self.template_flat, controls.expression, self.exprdirs_flat)  # (B, 3V)
        v = v.view(b, num_v, 3)
        if controls.shape is not None and self.shapedirs.shape[-1] > 0:
            s = controls.shape[:, : self.shapedirs.shape[-1]]
            v = v + torch.einsum("vcs,bs->bvc", self.shapedirs[..., : s.shape[1]], s)
        joints = self.j_regressor @ v  # (B, J, 3)

        num_joints = len(self.parents)
        axis_angle = torch.zeros(b, num_joints, 3, dtype=v.dtype, device=v.device)  # (B, J, 3)
        if self.jaw_index is not None:
            jaw = controls.jaw
            if self.jaw_from_expression is not None:
                jaw = jaw + controls.expression @ self.jaw_from_expression  # (B, 3)
            axis_angle[:, self.jaw_index] = jaw
        if self.neck_index is not None:
            axis_angle[:, self.neck_index] = controls.neck
        rots = axis_angle_to_matrix(axis_angle)  # (B, J, 3, 3)
        if self.has_pose_correctives:
            eye = torch.eye(3, dtype=v.dtype, device=v.device)
            feature = (rots[:, 1:] - eye).reshape(b, -1)  # (B, 9 (J - 1))
            v = v + (feature @ self.posedirs).view(b, -1, 3)

        transforms = rigid_transforms(rots, joints, self.parents)  # (B, J, 4, 4)
        num_j = transforms.shape[1]
        rows = transforms[:, :, :3, :].reshape(b, num_j, 12)  # (B, J, 12) top 3x4 of each
        per_vertex = (self.lbs_weights @ rows).view(b, num_v, 3, 4)  # (B, V, 3, 4) blended
        skinned = (per_vertex[..., :3] * v[:, :, None, :]).sum(-1) + per_vertex[..., 3]  # (B, V, 3)
        posed_joints = transforms[..., :3, :3] @ joints[..., None]  # (B, J, 3, 1)
        posed_joints = posed_joints[..., 0] + transforms[..., :3, 3]

        rt = controls.rotation.transpose(1, 2)  # (B, 3, 3)
        t = controls.translation[:, None, :]  # (B, 1, 3)
        return HeadOutput(
            vertices=skinned @ rt + t,
            joints=posed_joints @ rt + t,
            centre=self.template_centre @ rt + controls.translation,
        )
