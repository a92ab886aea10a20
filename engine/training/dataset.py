"""Training data from a capture: target crops, and the renderer inputs made from controls alone.

A capture (engine.capture.capture) is loaded into memory once (the sample clip: 472 crops of 256^2, 93 MB as
uint8). The split is temporal: the clip's last frames are the test set and the ones before them
the validation set, so nothing the model is scored on was next to a training frame. Frames are
addressed by row (the order of the capture); a pair (t, t + k) never crosses a split boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.camera import Camera
from engine.capture.capture import CaptureData
from engine.controls import expressions_from_scores
from engine.head.model import HeadControls, HeadModel
from engine.render.frame_inputs import FrameInputs, angles_from_rotation, make_inputs, warp_image

TEST_FRACTION = 0.15  # the clip's last frames, never trained on
VALIDATION_FRACTION = 0.05  # the frames just before them, for checkpoint choice and curves
MIN_SPLIT_FRAMES = 2


@dataclass(frozen=True)
class Split:
    """Row indices (ascending) of each part of a temporal split."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        """Each part as [first row, end row)."""
        parts = {"train": self.train, "validation": self.validation, "test": self.test}
        return {name: [int(rows[0]), int(rows[-1]) + 1] for name, rows in parts.items()}


def temporal_split(
    n: int, test_fraction: float = TEST_FRACTION, validation_fraction: float = VALIDATION_FRACTION
) -> Split:
    n_test = max(MIN_SPLIT_FRAMES, round(n * test_fraction))
    n_val = max(MIN_SPLIT_FRAMES, round(n * validation_fraction))
    n_train = n - n_test - n_val
    if n_train < MIN_SPLIT_FRAMES:
        raise ValueError(
            f"a capture of {n} frames is too short to split into train/validation/test"
        )
    rows = np.arange(n)
    return Split(rows[:n_train], rows[n_train : n_train + n_val], rows[n_train + n_val :])


class CaptureFrames:
    """A capture held in memory, ready to make batches at the renderer's resolution."""

    def __init__(self, data: CaptureData, head: HeadModel, resolution: int) -> None:
        self.resolution = resolution
        self.camera: Camera = data.camera
        crops = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in data.frame_paths])
        images = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()  # (N, 3, R0, R0) uint8
        if images.shape[-1] != resolution:
            resized = F.interpolate(images.float(), size=(resolution, resolution), mode="area")
            images = resized.round().clamp(0, 255).to(torch.uint8)
        self.images = images  # (N, 3, R, R) uint8
        self.expression = torch.from_numpy(
            expressions_from_scores(data.blendshapes, data.blendshape_names, head.expression_names)
        )  # (N, E)
        self.rotation = torch.from_numpy(data.rotation.astype(np.float32))  # (N, 3, 3)
        self.translation = torch.from_numpy(data.translation.astype(np.float32))  # (N, 3)
        self.angles = angles_from_rotation(self.rotation)  # (N, 5)
        self.head = head

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def median_translation(self) -> torch.Tensor:
        """(3,) where the head usually sits: the live avatar keeps it there."""
        return self.translation.median(dim=0).values

    def inputs(self, rows: torch.Tensor, affine: torch.Tensor | None = None) -> FrameInputs:
        """Renderer inputs of the frames at `rows` (B,), from their controls alone."""
        b = rows.shape[0]
        dev = self.head.v_template.device
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
        return make_inputs(
            self.head, controls, eye, self.angles[rows].to(dev), self.camera, self.resolution, moved
        )

    def targets(self, rows: torch.Tensor, affine: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, R, R) float target crops in [0, 1], moved by `affine` like their inputs."""
        images = self.images[rows].float() / 255.0
        return images if affine is None else warp_image(images, affine)


def sample_pairs(
    rows: np.ndarray, batch: int, max_k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) cache frames t and (B,) later frames t + k, k uniform in 1..max_k, both within `rows`
    (a contiguous block of a split)."""
    if len(rows) <= max_k:
        raise ValueError(f"a split of {len(rows)} frames cannot give pairs {max_k} frames apart")
    start = torch.randint(0, len(rows) - max_k, (batch,), generator=generator)  # (B,)
    k = torch.randint(1, max_k + 1, (batch,), generator=generator)  # (B,)
    base = torch.as_tensor(rows)
    return base[start], base[start + k]
