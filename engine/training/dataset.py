"""Training data from a capture: target crops, and the renderer inputs made from controls alone.

Frames are addressed by row (the order of the capture). `CaptureFrames` holds a capture's controls
and, when asked to preload, its crops (the talking clip: 4,800 crops of 256^2, 0.9 GB as uint8);
without preloading each batch of targets is read from the PNGs, so walking a capture (evaluation)
takes memory independent of its length. The split is engine/training/split.py's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.camera import Camera
from engine.capture.store import CaptureData
from engine.controls import expressions_from_scores
from engine.head.canonical_mesh import NUM_VERTICES as MESH_VERTICES
from engine.head.canonical_mesh import load_canonical_mesh
from engine.head.model import HeadControls, HeadModel
from engine.render.frame_inputs import (
    FrameInputs,
    angles_from_rotation,
    inputs_from_mesh,
    warp_image,
)
from engine.training.body import BODY_DIM
from engine.training.framing import FRAMING_DIM, Framing
from engine.training.mirror import (
    IDENTITY_AFFINE,
    flip_affine,
    flip_images,
    mirror_framing,
    mirror_points,
    mirror_rotation,
    name_partners,
    then,
    vertex_partners,
)


def read_crops(paths: Sequence[object], resolution: int) -> torch.Tensor:
    """Crop PNGs -> (B, 3, R, R) uint8 at `resolution` (area-resized when the capture's differs)."""
    crops = np.stack([np.asarray(Image.open(str(p)).convert("RGB")) for p in paths])
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()  # (B, 3, R0, R0) uint8
    if images.shape[-1] != resolution:
        resized = F.interpolate(images.float(), size=(resolution, resolution), mode="area")
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images


class CaptureFrames:
    """A capture ready to make batches at the renderer's resolution."""

    def __init__(
        self, data: CaptureData, head: HeadModel, resolution: int, preload: bool = True
    ) -> None:
        self.resolution = resolution
        self.camera: Camera = data.camera
        self.paths = data.frame_paths
        self.images = read_crops(self.paths, resolution) if preload else None  # (N, 3, R, R)
        self.expression = torch.from_numpy(
            expressions_from_scores(data.blendshapes, data.blendshape_names, head.expression_names)
        )  # (N, E)
        self.rotation = torch.from_numpy(data.rotation.astype(np.float32))  # (N, 3, 3)
        # The head where each crop shows it, under the one crop camera (engine/capture/crop.py).
        self.translation = torch.from_numpy(data.crop_translation.astype(np.float32))  # (N, 3)
        self.angles = angles_from_rotation(self.rotation)  # (N, 5)
        # The tracked landmarks as a mesh in the same place (468 mesh points: the default head's
        # topology), for training on the geometry the picture shows.
        shift = data.crop_translation - data.translation  # (N, 3)
        world = data.landmarks_world[:, :MESH_VERTICES] + shift[:, None, :]  # (N, 468, 3)
        self.landmark_vertices = torch.from_numpy(world.astype(np.float32))
        self.time_s = data.time_s
        self.head = head
        self.crop_boxes = data.crop_boxes  # (N, 3) x0, y0, side in source pixels
        self.framing: torch.Tensor | None = None  # (N, P) once `use_framing` is called
        self.framing_body = False  # whether the framing ends with the body's numbers
        self._partners: np.ndarray | None = None  # the head's mirror vertex pairs, when needed

    def at_median(self) -> CaptureFrames:
        """The same frames with no framing: every one at the training median, as served."""
        plain = copy.copy(self)
        plain.framing = None
        return plain

    def use_framing(
        self, framing: Framing, dim: int = FRAMING_DIM, body: np.ndarray | None = None
    ) -> None:
        """From now on each frame's inputs say where its crop sat (engine/training/framing.py),
        in `dim` numbers (FRAMING_DIM + 1: with the mirror mark), followed by the body's
        normalised numbers when `body` (N, BODY_DIM) is given (engine/training/body.py)."""
        numbers = framing.normalise(self.crop_boxes, dim)
        if body is not None:
            if body.shape != (len(self), BODY_DIM):
                raise ValueError(
                    f"body numbers must be ({len(self)}, {BODY_DIM}), got {body.shape}"
                )
            numbers = np.concatenate((numbers, body.astype(np.float32)), axis=1)
        self.framing = torch.from_numpy(numbers)
        self.framing_body = body is not None

    def __len__(self) -> int:
        return len(self.paths)

    def median_translation(self, rows: np.ndarray) -> torch.Tensor:
        """(3,) where the head usually sits in the crops of `rows`: the live avatar keeps it there."""
        return self.translation[torch.as_tensor(rows)].median(dim=0).values

    def head_centres(self, rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(len(rows), 3) where the head's centre sits in the world at `rows` (as `inputs` poses it)."""
        at = torch.as_tensor(rows)
        rotation = self.rotation[at]  # (B, 3, 3)
        return self.head.template_centre.cpu() @ rotation.transpose(1, 2) + self.translation[at]

    def inputs(
        self,
        rows: torch.Tensor,
        affine: torch.Tensor | None = None,
        geometry: str = "basis",
        mirrored: torch.Tensor | None = None,
    ) -> FrameInputs:
        """Renderer inputs of the frames at `rows` (B,): on the mesh rebuilt from their controls
        (`basis`, as served) or on the tracked landmarks' mesh (`landmarks`); with their framing
        once `use_framing` was called; those where `mirrored` (B,) bool is set seen in a mirror
        (engine/training/mirror.py: the same mesh mirrored, so it still fits the flipped picture)."""
        if geometry not in ("basis", "landmarks"):
            raise ValueError(f"unknown geometry {geometry!r}: basis or landmarks")
        if geometry == "landmarks" and self.head.data.num_vertices != MESH_VERTICES:
            raise ValueError(
                f"landmark geometry needs the default head's {MESH_VERTICES} vertices, this head "
                f"has {self.head.data.num_vertices}"
            )
        dev = self.head.v_template.device
        b = rows.shape[0]
        zeros3 = torch.zeros(b, 3, device=dev)
        controls = HeadControls(
            expression=self.expression[rows].to(dev),
            rotation=self.rotation[rows].to(dev),
            translation=self.translation[rows].to(dev),
            jaw=zeros3,
            neck=zeros3.clone(),
        )
        angles = self.angles[rows].to(dev)
        framing = None if self.framing is None else self.framing[rows].to(dev)
        if geometry == "basis":
            posed = self.head(controls)
            verts, centre = posed.vertices, posed.centre  # (B, V, 3), (B, 3)
        else:
            verts = self.landmark_vertices[rows].to(dev)  # (B, 468, 3)
            centre = self.head_centres(rows).to(dev)
        moved = None if affine is None else affine.to(dev)
        if mirrored is not None and bool(mirrored.any()):
            # The flipped picture's mesh: each vertex at its partner's flipped place (the flip
            # goes before the augmentation's affine, as in `targets`); its controls, mirrored.
            m = mirrored.to(dev)[:, None]  # (B, 1)
            names = torch.from_numpy(name_partners(self.head.expression_names)).to(dev)
            pairs = torch.from_numpy(self._vertex_partners()).to(dev)
            verts = torch.where(m[..., None], verts[:, pairs], verts)
            flip = flip_affine(self.resolution).to(dev).expand(b, 2, 3)
            base = moved if moved is not None else IDENTITY_AFFINE.to(dev).expand(b, 2, 3)
            moved = torch.where(m[..., None], then(flip, base), base)
            centre = torch.where(m, mirror_points(centre, self.camera), centre)
            mirrored_rotation = mirror_rotation(controls.rotation, self.camera)
            angles = torch.where(m, angles_from_rotation(mirrored_rotation), angles)
            controls = replace(
                controls,
                expression=torch.where(m, controls.expression[:, names], controls.expression),
                rotation=torch.where(m[..., None], mirrored_rotation, controls.rotation),
                translation=torch.where(
                    m, mirror_points(controls.translation, self.camera), controls.translation
                ),
            )
            if framing is not None:
                framing = torch.where(m, mirror_framing(framing, self.framing_body), framing)
        eye = torch.eye(3, device=dev).expand(b, 3, 3)
        x = inputs_from_mesh(
            self.head, verts, centre, controls, eye, angles, self.camera, self.resolution, moved
        )
        return replace(x, framing=framing, mirrored=None if mirrored is None else mirrored.to(dev))

    def _vertex_partners(self) -> np.ndarray:
        """The head's mirror pairs: the default head's from the canonical mesh it was built on
        (exactly symmetric; its fitted template is not quite)."""
        if self._partners is None:
            if self.head.data.num_vertices == MESH_VERTICES:
                self._partners = vertex_partners(load_canonical_mesh().vertices)
            else:
                self._partners = vertex_partners(self.head.data.v_template)
        return self._partners

    def uint8(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) uint8 crops at `rows`."""
        if self.images is not None:
            return self.images[rows]
        return read_crops([self.paths[int(r)] for r in rows], self.resolution)

    def targets(
        self,
        rows: torch.Tensor,
        affine: torch.Tensor | None = None,
        mirrored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 3, R, R) float target crops in [0, 1], flipped where `mirrored` (B,) bool is set
        and moved by `affine`, like their inputs."""
        images = self.uint8(rows).float() / 255.0
        if mirrored is not None:
            images = flip_images(images, mirrored)
        return images if affine is None else warp_image(images, affine)
