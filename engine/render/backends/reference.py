"""Reference frames: a few frames of the avatar's own capture, kept in its file, on which int8 is
calibrated and every backend is judged.

- calibration: pairs (cache frame, later frame) of training frames. Post-training quantization
  sets each layer's int8 range from the activations these produce, so they must be the avatar's
  own inputs (random ones give ranges that real faces overflow).
- held_out: pairs of test frames (never trained on) at the distances the default schedule serves,
  with their true crops: the quality gate compares a backend's pictures with fp32's and with the
  truth on them.

Both are the capture's controls only (expression, head rotation and translation, angles) plus
PNG crops of the held-out frames: ~2-3 MB in the avatar file. An avatar without them (an older
file, the tests' untrained ones) is judged on states made from its rest and pose range instead,
with no truth and no int8.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine.camera import Camera
from engine.head.model import HeadModel
from engine.render.frame_inputs import FrameInputs, capture_inputs

FIELDS = ("expression", "rotation", "translation", "angles")


@dataclass(frozen=True)
class ReferenceFrames:
    """N frames of the capture and how they are used.

    expression (N, E) float32 weights in the avatar's expression order; rotation (N, 3, 3);
    translation (N, 3) where the crop shows the head; angles (N, 5) degrees (as CaptureFrames);
    calibration (P, 2) int64 (cache frame, later frame) indices into the N, training frames;
    held_out (Q, 2) int64 likewise, test frames at served distances;
    truth: {index: (3, R, R) uint8 crop} for every frame named in held_out;
    split_digest: the capture split the frames were taken under (engine.training.split).
    """

    expression: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    angles: torch.Tensor
    calibration: torch.Tensor
    held_out: torch.Tensor
    truth: dict[int, torch.Tensor]
    split_digest: str

    def __post_init__(self) -> None:
        n = self.expression.shape[0]
        if any(getattr(self, f).shape[0] != n for f in FIELDS):
            raise ValueError("reference frames: expression, rotation, translation, angles differ")
        for name in ("calibration", "held_out"):
            pairs = getattr(self, name)
            if pairs.ndim != 2 or pairs.shape[1] != 2 or (len(pairs) and int(pairs.max()) >= n):
                raise ValueError(f"reference frames: {name} must be (P, 2) indices below {n}")
        missing = {int(i) for i in self.held_out.flatten()} - set(self.truth)
        if missing:
            raise ValueError(f"reference frames: no true crop of held-out frames {sorted(missing)}")

    def inputs(
        self, head: HeadModel, camera: Camera, resolution: int, rows: Sequence[int]
    ) -> FrameInputs:
        """Renderer inputs of frames `rows`, exactly as CaptureFrames.inputs makes them."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return capture_inputs(
            head,
            self.expression[index],
            self.rotation[index],
            self.translation[index],
            self.angles[index],
            camera,
            resolution,
        )

    def truth_images(self, rows: Sequence[int]) -> torch.Tensor:
        """(B, 3, R, R) float in [0, 1]: the true crops of held-out frames `rows`."""
        return torch.stack([self.truth[int(r)] for r in rows]).float() / 255.0

    def to_payload(self) -> dict[str, object]:
        """What the avatar file stores (tensors, lists and strings only: weights_only loads it)."""
        payload: dict[str, object] = {f: getattr(self, f).float() for f in FIELDS}
        payload["calibration"] = self.calibration.long()
        payload["held_out"] = self.held_out.long()
        payload["truth_rows"] = torch.tensor(sorted(self.truth), dtype=torch.long)
        payload["truth_png"] = [_png(self.truth[i]) for i in sorted(self.truth)]
        payload["split_digest"] = self.split_digest
        return payload

    @staticmethod
    def from_payload(payload: dict[str, object]) -> ReferenceFrames:
        rows = payload["truth_rows"]
        pngs = payload["truth_png"]
        if not isinstance(rows, torch.Tensor) or not isinstance(pngs, list):
            raise ValueError("reference frames: truth_rows and truth_png are missing")
        truth = {int(r): _unpng(p) for r, p in zip(rows.tolist(), pngs, strict=True)}
        tensors = {f: payload[f] for f in (*FIELDS, "calibration", "held_out")}
        if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ValueError("reference frames: a field is not a tensor")
        return ReferenceFrames(**tensors, truth=truth, split_digest=str(payload["split_digest"]))  # type: ignore[arg-type]


def _png(image: torch.Tensor) -> torch.Tensor:
    """(3, R, R) uint8 -> its PNG bytes as a uint8 tensor (lossless, ~4x smaller than raw)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _unpng(data: object) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8:
        raise ValueError("reference frames: a true crop is not PNG bytes")
    rgb = np.asarray(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()  # (3, R, R)
