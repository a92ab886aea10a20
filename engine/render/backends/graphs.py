"""The two networks as ONNX graphs, the exchange format the CPU inference runtimes read.

A graph takes and returns plain tensors (no dataclasses): masks as 0/1 floats, the cache as its
three feature maps and the UV map, mask and controls of its frame. The batch dimension is left
free, so one exported model serves one session or several at once. Exported once per avatar (under
a second for the `cpu` preset) into the folder `engine.render.backends.select` caches.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from engine.render.networks.generator import Generator
from engine.render.networks.warp import ImplicitWarp
from engine.render.neural_cache import NeuralCache

OPSET = 18  # ONNX Runtime 1.31 and OpenVINO 2026.4 both read it
GENERATOR_FILE = "generator.onnx"
WARP_FILE = "warp.onnx"
GENERATOR_INPUTS = ("x", "controls")
GENERATOR_OUTPUTS = ("rgb", "alpha", "c3", "c4", "c5")
WARP_INPUTS = (
    "c3", "c4", "c5", "cache_uv", "cache_mask", "cache_controls", "uv", "mask", "controls"
)  # fmt: skip
WARP_OUTPUTS = ("rgb", "alpha")


class GeneratorGraph(nn.Module):
    """x (B, C + 1, H, W), controls (B, D) -> rgb (B, 3, H, W), alpha (B, 1, H, W), c3, c4, c5."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, controls: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.generator(x, controls)
        return out.rgb, out.alpha, out.c3, out.c4, out.c5


class WarpGraph(nn.Module):
    """The implicit warp on tensors: c3, c4, c5 (B, C*, h, w) cache features, cache_uv (B, H, W, 2),
    cache_mask (B, H, W) 0/1, cache_controls (B, D), uv, mask, controls of the new frame ->
    rgb (B, 3, H, W), alpha (B, 1, H, W). Layers the avatar does not cache are ignored."""

    def __init__(self, warp: ImplicitWarp) -> None:
        super().__init__()
        self.warp = warp
        self.layers = warp.config.cache_layers

    def forward(
        self,
        c3: torch.Tensor,
        c4: torch.Tensor,
        c5: torch.Tensor,
        cache_uv: torch.Tensor,
        cache_mask: torch.Tensor,
        cache_controls: torch.Tensor,
        uv: torch.Tensor,
        mask: torch.Tensor,
        controls: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cache = NeuralCache(
            c3=c3,
            c4=c4 if "c4" in self.layers else None,
            c5=c5 if "c5" in self.layers else None,
            uv=cache_uv,
            mask=cache_mask,  # 0/1 floats: the warp only ever casts its masks to floats
            controls=cache_controls,
            screen=cache_uv,  # unused by the implicit warp
        )
        out = self.warp(cache, uv, mask, controls)
        return out.rgb, out.alpha


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
) -> None:
    """torch.onnx.export to `path` atomically, batch dimension free on every input and output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():  # the shape checks inside the nets trace as constants
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # torch 2.13 calls the TorchScript exporter legacy; the dynamo one needs onnxscript
            # and traced these networks no better.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                args,
                tmp,
                opset_version=OPSET,
                dynamo=False,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_generator(
    generator: Generator, x: torch.Tensor, controls: torch.Tensor, folder: Path
) -> Path:
    """Export `generator` (fp32, prepared for inference) traced on example inputs."""
    path = folder / GENERATOR_FILE
    example = (x.float().contiguous(), controls.float())
    _export(GeneratorGraph(generator).eval(), example, path, GENERATOR_INPUTS, GENERATOR_OUTPUTS)
    return path


def export_warp(warp: ImplicitWarp, example: tuple[torch.Tensor, ...], folder: Path) -> Path:
    """Export the implicit warp traced on `example` (the WARP_INPUTS in order)."""
    path = folder / WARP_FILE
    args = tuple(t.float().contiguous() for t in example)
    pool_each, warp.pool_each = warp.pool_each, False  # the form the runtimes compile
    try:
        _export(WarpGraph(warp).eval(), args, path, WARP_INPUTS, WARP_OUTPUTS)
    finally:
        warp.pool_each = pool_each
    return path
