"""A training frame seen in a mirror: the other half of the poses a clip never shows.

The talking clip's man talks to someone beside the camera: relative to his line of sight to the
camera his head turns from 5 degrees one way to 31 the other, so an avatar trained on it tears its
cheek when asked to turn the first way. Mirrored, each frame is one of a man turning the other
way: the picture and the background flipped left to right about the picture's centre, the same
mesh flipped with it (each vertex takes its mirror partner's place, so the left cheek's texture
learns from the right cheek), every left expression swapped for its right one, and the head
rotation mirrored in the plane that the flip mirrors (the one through the camera, its up axis and
the picture's centre column; not the world's x = 0, since a crop's principal point is off its
centre: the talking clip's sits at 0.375). Faces are near enough symmetric for this to teach poses
a clip never shows; what is not symmetric (the light, a parting in the hair) the comparison in
README weighs (`engine train --mirror`).

Pure functions of a batch; the capture (engine/training/dataset.py) applies them to the rows drawn
to be mirrored, the avatar flips its background for them (`FrameInputs.mirrored`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.camera import Camera
from engine.training.body import BODY_DIM, mirror_body
from engine.training.framing import MIRROR_MARK

FLIP_X = (-1.0, 1.0, 1.0)  # the world mirror: x -> -x
SIDES = (("Left", "Right"), ("Right", "Left"))
IDENTITY_AFFINE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # (2, 3) no move at all
SYMMETRY_TOLERANCE = 0.05  # share of the mesh's width a mirrored vertex may miss its partner by


def name_partners(names: Sequence[str]) -> np.ndarray:
    """(E,) for each expression name, the index of its mirror image (eyeBlinkLeft <-> eyeBlinkRight,
    jawLeft <-> jawRight); itself for a name with no side (jawOpen). A side whose partner is not in
    `names` is an error: mirrored frames would lose that expression."""
    index = {n: i for i, n in enumerate(names)}
    partners = np.arange(len(names))
    for i, name in enumerate(names):
        for side, other in SIDES:
            if side in name:
                partner = name.replace(side, other)
                if partner not in index:
                    raise ValueError(f"expression {name!r} has no mirror image {partner!r}")
                partners[i] = index[partner]
    return partners


def vertex_partners(vertices: np.ndarray) -> np.ndarray:
    """(V, 3) a symmetric template (x = 0 its middle) -> (V,) each vertex's mirror partner (the
    nearest to its mirror image). A template that is not symmetric is an error."""
    verts = np.asarray(vertices, dtype=np.float64)
    mirrored = verts * np.asarray(FLIP_X)
    dist = np.linalg.norm(mirrored[:, None, :] - verts[None, :, :], axis=-1)  # (V, V)
    partners = dist.argmin(axis=1)
    miss = dist[np.arange(len(verts)), partners].max()
    width = np.ptp(verts[:, 0])
    if miss > SYMMETRY_TOLERANCE * width or not np.array_equal(
        partners[partners], np.arange(len(verts))
    ):
        raise ValueError(
            f"the mesh is not left-right symmetric: a mirrored vertex misses its partner by "
            f"{miss:.3g} ({width:.3g} wide)"
        )
    return partners


def flip_affine(resolution: int) -> torch.Tensor:
    """(2, 3) the pixel-space affine that flips a picture `resolution` wide left to right."""
    return torch.tensor([[-1.0, 0.0, float(resolution)], [0.0, 1.0, 0.0]])


def then(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) pixel-space affines -> the one that applies `first`, then `second`."""
    linear = second[..., :2] @ first[..., :2]  # (..., 2, 2)
    shift = second[..., :2] @ first[..., 2:] + second[..., 2:]  # (..., 2, 1)
    return torch.cat((linear, shift), dim=-1)


def mirror_plane(camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """The world reflection that a left-right flip of the camera's picture makes: (3, 3) H and
    (3,) a point on its plane (the camera's centre); a point p goes to H (p - o) + o. The plane
    holds the camera's up axis and the ray through the picture's centre column."""
    rot = torch.tensor(camera.rotation, dtype=torch.float64)  # world -> camera rows
    centre = -rot.T @ torch.tensor(camera.translation, dtype=torch.float64)
    ray = rot.T @ torch.tensor([(0.5 - camera.cx) / camera.fx, 0.0, 1.0], dtype=torch.float64)
    normal = F.normalize(torch.linalg.cross(rot.T[:, 1], ray), dim=0)
    h = torch.eye(3, dtype=torch.float64) - 2.0 * torch.outer(normal, normal)
    return h.float(), centre.float()


def mirror_points(points: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(..., 3) world points (a head's centre, its translation) -> their mirror images."""
    h, o = (t.to(points) for t in mirror_plane(camera))
    return (points - o) @ h.T + o


def mirror_rotation(rotation: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(..., 3, 3) head rotations -> those of the mirrored heads, H R M with M the head's own
    left-right mirror (x -> -x in head coordinates, where its template is symmetric). Seen along
    the line to the camera, yaw and roll change sign and pitch stays."""
    h = mirror_plane(camera)[0].to(rotation)
    flip = torch.diag(rotation.new_tensor(FLIP_X))
    return h @ rotation @ flip


def mirror_framing(framing: torch.Tensor, body: bool = False) -> torch.Tensor:
    """(B, P) normalised framing (engine/training/framing.py: centre x first) -> that of the
    mirrored source frame: a crop left of the usual place sits as far right of it; where the
    framing carries the mirror mark, it is set; where it ends with the body's numbers (`body`,
    engine/training/body.py), they are mirrored too."""
    flipped = framing.clone()
    flipped[:, 0] = -flipped[:, 0]
    if body:
        flipped[:, -BODY_DIM:] = mirror_body(framing[:, -BODY_DIM:])
    if framing.shape[1] - (BODY_DIM if body else 0) > MIRROR_MARK:
        flipped[:, MIRROR_MARK] = 1.0
    return flipped


def flip_images(images: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images with those where `mirrored` (B,) bool is set flipped left to right."""
    return torch.where(mirrored.to(images.device)[:, None, None, None], images.flip(-1), images)
