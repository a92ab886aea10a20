"""What a training run is asked for (`TrainSettings`), and which settings a run continued from a
checkpoint (`--resume`) or from a finished avatar (`--init`) must share with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.render.networks.config import WarpKind

DEFAULT_FACE_WEIGHT = 0.0  # a face pixel counts 1 + this in the L1 and gradient terms
DEFAULT_GRADIENT_WEIGHT = 0.0  # image-gradient L1 next to L1
DEFAULT_SSIM_WEIGHT = 0.2  # structural term (1 - SSIM) next to L1

Geometry = Literal["basis", "landmarks"]
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class TrainSettings:
    preset: str
    steps: int
    max_minutes: float
    batch: int
    max_k: int
    lr: float
    seed: int
    cache_layers: tuple[str, ...]
    warp_kind: WarpKind
    generator_controls: int | None = None
    face_weight: float = DEFAULT_FACE_WEIGHT
    gradient_weight: float = DEFAULT_GRADIENT_WEIGHT
    ssim_weight: float = DEFAULT_SSIM_WEIGHT
    geometry: Geometry = "basis"
    precision: Precision = "fp32"
    basis: str | None = None  # expression basis file for the default head (None: the shipped one)
    adversarial: float = 0.0  # weight of the patch critic's loss (0: no critic)
    lr_final: float = 1.0  # learning rate at the end of the budget, as a share of lr (cosine)
    framing: bool = False  # the generator reads where each crop sat (engine/training/framing)
    mirror: float = 0.0  # share of training pairs seen in a mirror (engine/training/mirror)
    mirror_mark: bool = False  # the framing says which pairs were mirrored (training/framing)
    body: bool = False  # the framing ends with where the shoulders are (engine/training/body)
    warp_framing: bool = False  # the warp reads the framing too, its frame's and its cache's
    warp_flow: bool = False  # the warp moves its cached skips along a flow it predicts
    # Train the warp alone (texture, generator and background frozen, the caches made as served)
    # on distances min_k..max_k: a finished avatar's warp fitted to the distances served.
    warp_only: bool = False
    min_k: int = 1

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"cache_layers": list(self.cache_layers)}


# Settings a resumed run must share with its checkpoint (the rest may change, e.g. the budget).
# What the weights mean: an avatar continued with --init must agree on these.
MODEL_KEYS = (
    "preset", "cache_layers", "warp_kind", "batch", "max_k", "seed", "generator_controls",
    "geometry", "basis", "framing", "mirror_mark", "body", "warp_framing", "warp_flow",
)  # fmt: skip
# Model settings an --init run may turn on over a finished avatar: the parts they add start at
# zero, so the avatar continues from exactly the pictures it made.
EXTENSIONS = {
    "framing": (False, True),
    "mirror_mark": (False, True),
    "body": (False, True),
    "warp_framing": (False, True),
    "warp_flow": (False, True),
}
# The loss weights and the data's augmentation may change on --init (fine-tuning a trained avatar
# with a new loss is a recipe of its own, recorded in the summary's `stages`); --resume continues
# one run, so they may not.
LOSS_KEYS = (
    "face_weight", "gradient_weight", "ssim_weight", "adversarial", "lr", "lr_final", "mirror",
    "warp_only", "min_k",
)  # fmt: skip
RESUME_KEYS = MODEL_KEYS + LOSS_KEYS
