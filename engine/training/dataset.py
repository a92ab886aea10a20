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
from engine.head.model import HeadControls, HeadModel
from engine.render.frame_inputs import (
    FrameInputs,
    angles_from_rotation,
    capture_inputs,
    inputs_from_mesh,
    warp_image,
)
from engine.training.framing import Framing


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

    def at_median(self) -> CaptureFrames:
        """The same frames with no framing: every one at the training median, as served."""
        plain = copy.copy(self)
        plain.framing = None
        return plain

    def use_framing(self, framing: Framing) -> None:
        """From now on each frame's inputs say where its crop sat (engine/training/framing.py)."""
        self.framing = torch.from_numpy(framing.normalise(self.crop_boxes))

    def __len__(self) -> int:
        return len(self.paths)

    def median_translation(self, rows: np.ndarray) -> torch.Tensor:
        """(3,) where the head usually sits in the crops of `rows`: the live avatar keeps it there."""
        return self.translation[torch.as_tensor(rows)].median(dim=0).values

    def inputs(
        self, rows: torch.Tensor, affine: torch.Tensor | None = None, geometry: str = "basis"
    ) -> FrameInputs:
        """Renderer inputs of the frames at `rows` (B,): from their controls alone (`basis`, as
        served), or on the tracked landmarks' mesh (`landmarks`); with their framing once
        `use_framing` was called."""
        x = self._inputs(rows, affine, geometry)
        if self.framing is None:
            return x
        return replace(x, framing=self.framing[rows].to(x.controls.device))

    def _inputs(
        self, rows: torch.Tensor, affine: torch.Tensor | None, geometry: str
    ) -> FrameInputs:
        if geometry == "basis":
            return capture_inputs(
                self.head,
                self.expression[rows],
                self.rotation[rows],
                self.translation[rows],
                self.angles[rows],
                self.camera,
                self.resolution,
                affine,
            )
        if geometry != "landmarks":
            raise ValueError(f"unknown geometry {geometry!r}: basis or landmarks")
        if self.head.data.num_vertices != MESH_VERTICES:
            raise ValueError(
                f"landmark geometry needs the default head's {MESH_VERTICES} vertices, this head "
                f"has {self.head.data.num_vertices}"
            )
        b, dev = rows.shape[0], self.head.v_template.device
        zeros3 = torch.zeros(b, 3, device=dev)
        controls = HeadControls(
            expression=self.expression[rows].to(dev),
            rotation=self.rotation[rows].to(dev),
            translation=self.translation[rows].to(dev),
            jaw=zeros3,
            neck=zeros3.clone(),
        )
        eye = torch.eye(3, device=dev).expand(b, 3, 3)
        moved = None if affine is None else affine.to(dev)
        angles = self.angles[rows].to(dev)
        verts = self.landmark_vertices[rows].to(dev)  # (B, 468, 3)
        centre = self.head.template_centre @ controls.rotation.transpose(1, 2)  # (B, 3)
        centre = centre + controls.translation
        return inputs_from_mesh(
            self.head, verts, centre, controls, eye, angles, self.camera, self.resolution, moved
        )

    def uint8(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) uint8 crops at `rows`."""
        if self.images is not None:
            return self.images[rows]
        return read_crops([self.paths[int(r)] for r in rows], self.resolution)

    def targets(self, rows: torch.Tensor, affine: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, R, R) float target crops in [0, 1], moved by `affine` like their inputs."""
        images = self.uint8(rows).float() / 255.0
        return images if affine is None else warp_image(images, affine)
