"""What a backend is: the way one stage (generator or warp) of the renderer is run.

The texture lookup, rasterisation and compositing stay in fp32 PyTorch; only the two convolutional
networks change hands, because that is where the time goes (MEASURED.md: generator ~43 ms and warp
~13 ms of a ~50 ms frame on the 2-core CPU) and because lowering the precision of the texture
stage ruined the picture (8.9 dB) while the generator alone in bf16 stayed 60 dB from fp32. So a
backend is chosen per stage: (runtime, precision) for the generator and for the warp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.render.networks.generator import GeneratorOutput
from engine.render.networks.warp import WarpOutput
from engine.render.neural_cache import NeuralCache
from engine.render.raster import PixelMotion

STAGES = ("generator", "warp")
RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
TEXTURES = ("pyramid", "collapsed")  # the neural texture as trained, or summed into one level

# x (B, C + 1, H, W) fp32 generator input, controls (B, D) -> GeneratorOutput (rgb, alpha fp32;
# cache features in whatever float type the stage computes in: the warp stage casts what it reads)
GeneratorFn = Callable[[torch.Tensor, torch.Tensor], GeneratorOutput]
# cache, uv (B, H, W, 2), mask (B, H, W) bool, controls (B, D), pixel motion (explicit warp only)
WarpRun = Callable[
    [NeuralCache, torch.Tensor, torch.Tensor, torch.Tensor, PixelMotion | None], WarpOutput
]


def unchanged(cache: NeuralCache) -> NeuralCache:
    return cache


@dataclass(frozen=True)
class WarpFn:
    """The warp stage, called like `run`. `prepare` readies a cache that will serve several warped
    frames (the torch implicit warp computes the halves of its convolutions that read only the
    cache: `engine.render.networks.split_warp`); it is paid once per cache. A cache that was not
    prepared warps all the same, at that cost per frame."""

    run: WarpRun
    prepare: Callable[[NeuralCache], NeuralCache] = unchanged

    def __call__(
        self,
        cache: NeuralCache,
        uv: torch.Tensor,
        mask: torch.Tensor,
        controls: torch.Tensor,
        motion: PixelMotion | None,
    ) -> WarpOutput:
        return self.run(cache, uv, mask, controls, motion)


@dataclass(frozen=True)
class StageChoice:
    """How one stage runs: runtime in RUNTIMES, precision in PRECISIONS."""

    runtime: str
    precision: str

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}: expected one of {RUNTIMES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: expected one of {PRECISIONS}")

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"

    def to_dict(self) -> dict[str, str]:
        return {"runtime": self.runtime, "precision": self.precision}


TORCH_FP32 = StageChoice("torch", "fp32")


@dataclass(frozen=True)
class BackendChoice:
    """The renderer's backends: one per stage, the neural texture's form (TEXTURES), and where the
    exported models of the non-torch ones live (`model_dir`, None when both stages run in torch)."""

    generator: StageChoice = TORCH_FP32
    warp: StageChoice = TORCH_FP32
    model_dir: Path | None = None
    texture: str = "pyramid"

    def __post_init__(self) -> None:
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown texture form {self.texture!r}: expected one of {TEXTURES}")
        exported = self.generator.runtime != "torch" or self.warp.runtime != "torch"
        if exported and self.model_dir is None:
            raise ValueError("a runtime other than torch needs the folder of its exported models")

    @property
    def label(self) -> str:
        stages = (
            self.generator.label
            if self.generator == self.warp
            else f"generator {self.generator.label}, warp {self.warp.label}"
        )
        return stages + (", texture collapsed" if self.texture == "collapsed" else "")

    def to_dict(self) -> dict[str, object]:
        """Per stage, and DESIGN's `{"runtime", "precision"}` of the whole ("generator+warp" where
        the two stages differ)."""
        g, w = self.generator, self.warp
        return {
            "runtime": g.runtime if g.runtime == w.runtime else f"{g.runtime}+{w.runtime}",
            "precision": g.precision
            if g.precision == w.precision
            else f"{g.precision}+{w.precision}",
            "generator": g.to_dict(),
            "warp": w.to_dict(),
            "texture": self.texture,
            "label": self.label,
        }


FP32 = BackendChoice()
