"""The stages in PyTorch: fp32 as trained, bf16 where the CPU does it natively (AVX-512 BF16, AMX)
or on CUDA, fp16 on CUDA.

A lowered stage runs a copy of the network cast to the precision; its inputs are cast on the way in
and the picture (rgb, alpha) comes back as fp32 so that compositing and the 8-bit conversion are
unchanged. The generator's cache features stay in the lowered type: the warp reads them as they
are when it runs in the same type (half the memory), and casts them when it does not.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from engine.render.backends.stages import GeneratorFn, StageChoice, WarpFn
from engine.render.networks.generator import Generator, GeneratorOutput
from engine.render.networks.split_warp import SplitWarp
from engine.render.networks.warp import ImplicitWarp, WarpOutput
from engine.render.neural_cache import CacheTerms, NeuralCache
from engine.render.raster import PixelMotion

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(choice: StageChoice, device: torch.device) -> torch.dtype:
    """The dtype a torch stage computes in; an impossible choice fails naming why."""
    if choice.precision not in DTYPES:
        raise ValueError(
            f"torch does not run {choice.precision}: int8 runs in onnxruntime or openvino"
        )
    if choice.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 runs on CUDA only: on the CPU use bf16 (where native) or fp32")
    return DTYPES[choice.precision]


def _lowered(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    if dtype == torch.float32:
        return net
    return copy.deepcopy(net).to(dtype)


def _cast(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return x if x is None or x.dtype == dtype else x.to(dtype)


def _picture(x: torch.Tensor) -> torch.Tensor:
    """A lowered network's rgb or alpha (a channel slice of its channels-last RGBA) -> fp32,
    channels-first. Kept channels-last, the slice's conversion walks 3 of every 4 values one at a
    time: 0.93 ms for the 256^2 rgb on one core, against 0.11 ms written channels-first."""
    return x.to(torch.float32, memory_format=torch.contiguous_format)


def torch_generator(net: Generator, choice: StageChoice, device: torch.device) -> GeneratorFn:
    """The generator stage run by `net` (prepared for inference) at `choice.precision`."""
    dtype = torch_dtype(choice, device)
    lowered = _lowered(net, dtype)

    def run(x: torch.Tensor, controls: torch.Tensor) -> GeneratorOutput:
        out: GeneratorOutput = lowered(x.to(dtype), controls.to(dtype))
        if dtype == torch.float32:
            return out
        return dataclasses.replace(out, rgb=_picture(out.rgb), alpha=_picture(out.alpha))

    return run


def torch_warp(net: nn.Module, choice: StageChoice, device: torch.device) -> WarpFn:
    """The warp stage run by `net` (ImplicitWarp or ExplicitWarp, prepared for inference). The
    implicit warp runs split at its cache (`SplitWarp`): its `prepare` makes a served cache's
    terms once."""
    dtype = torch_dtype(choice, device)
    if isinstance(net, ImplicitWarp) and SplitWarp.splits(net):
        return _split_warp(net, dtype)
    lowered = _lowered(net, dtype)

    def run(
        cache: NeuralCache,
        uv: torch.Tensor,
        mask: torch.Tensor,
        controls: torch.Tensor,
        motion: PixelMotion | None,
    ) -> WarpOutput:
        out: WarpOutput = lowered(_features_in(cache, dtype), uv, mask, controls.to(dtype), motion)
        if dtype == torch.float32:
            return out
        return WarpOutput(rgb=_picture(out.rgb), alpha=_picture(out.alpha))

    return WarpFn(run)


def _features_in(cache: NeuralCache, dtype: torch.dtype) -> NeuralCache:
    """`cache` with its features and controls in `dtype` (a generator of another precision)."""
    if cache.c3.dtype == dtype and cache.controls.dtype == dtype:
        return cache
    return dataclasses.replace(
        cache,
        c3=cache.c3.to(dtype),
        c4=_cast(cache.c4, dtype),
        c5=_cast(cache.c5, dtype),
        controls=cache.controls.to(dtype),
    )


def _split_warp(net: ImplicitWarp, dtype: torch.dtype) -> WarpFn:
    # Built from the fp32 weights and then cast: the summed phase kernels are rounded once.
    split = SplitWarp(copy.deepcopy(net)).to(dtype)

    def terms(cache: NeuralCache) -> CacheTerms:
        if cache.terms is not None and cache.terms.stem.dtype == dtype:
            return cache.terms
        return split.terms(_features_in(cache, dtype))

    def prepare(cache: NeuralCache) -> NeuralCache:
        return dataclasses.replace(cache, terms=terms(cache))

    def run(
        cache: NeuralCache,
        uv: torch.Tensor,
        mask: torch.Tensor,
        controls: torch.Tensor,
        motion: PixelMotion | None,
    ) -> WarpOutput:
        out: WarpOutput = split(cache, terms(cache), uv, mask, controls.to(dtype))
        return out

    return WarpFn(run, prepare)
