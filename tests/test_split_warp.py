"""The implicit warp split at its cache (engine/render/networks/split_warp.py): the rewrites are
exact, the split warp draws the trained warp's pictures, a prepared cache warps like one that was
not, and batched caches keep their own terms."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.pipeline.worker import stack_caches
from engine.render.backends.stages import StageChoice
from engine.render.backends.torch_stage import torch_warp
from engine.render.networks import PRESETS, Generator, make_cache
from engine.render.networks.config import RendererConfig
from engine.render.networks.inference import prepare_for_inference
from engine.render.networks.split_warp import SplitWarp, phase_kernel, shuffle, unshuffle
from engine.render.networks.warp import ImplicitWarp
from engine.render.neural_cache import NeuralCache

TINY = PRESETS["tiny"]
SIZE = TINY.resolution


def _frame(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uv (B, H, W, 2), a disk mask moved by `seed` (B, H, W), controls (B, D)."""
    gen = torch.Generator().manual_seed(seed)
    coords = (torch.arange(SIZE) + 0.5) / SIZE - 0.5
    shift = 0.02 * seed
    disk = (coords[None, :] - shift) ** 2 + coords[:, None] ** 2 < 0.35**2  # (H, W)
    mask = disk.expand(batch, SIZE, SIZE).clone()
    uv = torch.rand(batch, SIZE, SIZE, 2, generator=gen) * mask[..., None]
    controls = torch.rand(batch, TINY.control_dim, generator=gen)
    return uv, mask, controls


def _cache(config: RendererConfig, batch: int = 2) -> NeuralCache:
    torch.manual_seed(1)
    uv, mask, controls = _frame(batch, seed=1)
    with torch.no_grad():
        out = Generator(config)(torch.rand(batch, config.generator_in_channels, SIZE, SIZE))
    return make_cache(out, config.cache_layers, uv, mask, controls, torch.zeros(batch, 5, 3))


def _trained_looking(config: RendererConfig) -> ImplicitWarp:
    """A random implicit warp whose BatchNorms have statistics and affines far from their
    initial values (as after training), and whose FiLM is not zero: every term matters."""
    torch.manual_seed(2)
    warp = ImplicitWarp(config)
    for module in warp.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(n) * 0.3)
            module.running_var.copy_(torch.rand(n) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.randn(n) * 0.5 + 1.0)
                module.bias.copy_(torch.randn(n) * 0.2)
    with torch.no_grad():
        warp.trunk.film.weight.normal_(0.0, 0.1)
        warp.trunk.film.bias.normal_(0.0, 0.1)
    return prepare_for_inference(warp, channels_last=True)


@pytest.mark.parametrize("source", ["nearest", "unshuffled"])
def test_a_full_resolution_conv_runs_at_half_resolution_in_phases(source: str) -> None:
    torch.manual_seed(0)
    weight = torch.randn(3, 5, 3, 3)
    low = torch.randn(2, 5, 8, 8)
    full = F.interpolate(low, scale_factor=2.0, mode="nearest") if source == "nearest" else None
    if full is None:
        full = torch.randn(2, 5, 16, 16)
        low = unshuffle(full)
    want = F.conv2d(full, weight, padding=1)  # (2, 3, 16, 16)
    got = shuffle(F.conv2d(low, phase_kernel(weight, source), padding=1))
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_shuffle_is_pixel_shuffle_with_the_phase_first_and_unshuffle_undoes_it(
    channels_last: bool,
) -> None:
    x = torch.randn(2, 3, 6, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    phases = unshuffle(x)  # (2, 12, 3, 5)
    assert phases.shape == (2, 12, 3, 5)
    assert torch.equal(shuffle(phases), x)
    # Phase p = row parity * 2 + column parity holds the pixels at that parity.
    assert torch.equal(phases[:, 3 * 1 : 3 * 2], x[:, :, 0::2, 1::2])
    assert torch.equal(phases[:, 3 * 2 : 3 * 3], x[:, :, 1::2, 0::2])
    # F.pixel_unshuffle orders channel-first: the same values, permuted.
    theirs = F.pixel_unshuffle(x, 2).view(2, 3, 4, 3, 5).transpose(1, 2).reshape(2, 12, 3, 5)
    assert torch.equal(phases, theirs)
    if channels_last:  # the memory format is kept: the conv after it reads it without a copy
        assert shuffle(phases).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layers", [("c3",), ("c3", "c4"), ("c3", "c4", "c5")])
def test_the_split_warp_draws_the_trained_warps_pictures(layers: tuple[str, ...]) -> None:
    config = replace(TINY, cache_layers=layers)
    warp = _trained_looking(config)
    split = SplitWarp(warp)
    cache = _cache(config)
    uv, mask, controls = _frame(2, seed=4)
    with torch.inference_mode():
        want = warp(cache, uv, mask, controls)
        got = split(cache, split.terms(cache), uv, mask, controls)
    assert got.rgb.shape == want.rgb.shape == (2, 3, SIZE, SIZE)
    assert torch.allclose(got.rgb, want.rgb, atol=1e-5)
    assert torch.allclose(got.alpha, want.alpha, atol=1e-5)
    assert got.rgb.dtype == torch.float32


def test_only_a_warp_prepared_for_inference_is_split() -> None:
    assert not SplitWarp.splits(ImplicitWarp(TINY))  # training mode, BatchNorm not folded
    assert SplitWarp.splits(_trained_looking(TINY))
    with pytest.raises(ValueError, match="prepared for inference"):
        SplitWarp(ImplicitWarp(TINY).eval())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_prepared_cache_warps_as_one_that_was_not_and_batches_keep_their_terms(
    precision: str,
) -> None:
    warp = _trained_looking(TINY)
    stage = torch_warp(warp, StageChoice("torch", precision), torch.device("cpu"))
    caches = [_cache(TINY, batch=1), replace(_cache(TINY, batch=1), c3=torch.rand(1, 16, 16, 16))]
    uv, mask, controls = _frame(2, seed=5)
    with torch.inference_mode():
        prepared = [stage.prepare(c) for c in caches]
        assert all(p.terms is not None for p in prepared)
        singles = [
            stage(p, uv[b : b + 1], mask[b : b + 1], controls[b : b + 1], None)
            for b, p in enumerate(prepared)
        ]
        plain = stage(caches[0], uv[:1], mask[:1], controls[:1], None)
        batched = stage(stack_caches(prepared), uv, mask, controls, None)
        trained = warp(caches[0], uv[:1], mask[:1], controls[:1])
    assert torch.equal(plain.rgb, singles[0].rgb)  # the terms are made the same way either way
    assert torch.allclose(batched.rgb, torch.cat([s.rgb for s in singles]), atol=1e-6)
    assert not torch.allclose(singles[0].rgb, singles[1].rgb)  # each cache its own terms
    tolerance = 1e-5 if precision == "fp32" else 3e-2
    assert torch.allclose(singles[0].rgb, trained.rgb, atol=tolerance)
