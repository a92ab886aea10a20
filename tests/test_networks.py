"""Tests of engine.render.networks: shapes, the cache, both warps, gradients, learning, config, MACs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from engine.render.networks import (
    PRESETS,
    ExplicitWarp,
    Generator,
    ImplicitWarp,
    NeuralTexture,
    RendererConfig,
    generator_input,
    identity_motion,
    macs,
    make_cache,
    make_warp,
    pool_motion,
    prepare_for_inference,
    sh_basis,
    warp_features,
)
from engine.render.networks.inference import fuse_batch_norms
from engine.render.neural_cache import NeuralCache, block_means
from engine.render.raster import PixelMotion

TINY = PRESETS["tiny"]
SIZE = TINY.resolution
LAYER_SETTINGS = [("c3",), ("c3", "c4"), ("c3", "c4", "c5")]
PAPER_GENERATOR_MACS = 364e9  # reported by Yu et al. 2023 at 512^2
PAPER_WARP_MACS = 87e9


def _frame(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uv (B, H, W, 2), a disk mask (B, H, W), controls (B, D)."""
    gen = torch.Generator().manual_seed(seed)
    coords = (torch.arange(SIZE) + 0.5) / SIZE - 0.5
    disk = coords[None, :] ** 2 + coords[:, None] ** 2 < 0.4**2  # (H, W)
    mask = disk.expand(batch, SIZE, SIZE).clone()
    uv = torch.rand(batch, SIZE, SIZE, 2, generator=gen) * mask[..., None]
    controls = torch.rand(batch, TINY.control_dim, generator=gen)
    return uv, mask, controls


def _view(batch: int = 2) -> torch.Tensor:
    return F.normalize(torch.tensor([[0.2, -0.1, 1.0]]).expand(batch, 3), dim=1)


def _cache(config: RendererConfig, batch: int = 2) -> NeuralCache:
    torch.manual_seed(1)
    uv, mask, controls = _frame(batch, seed=1)
    x = torch.rand(batch, config.generator_in_channels, SIZE, SIZE)
    out = Generator(config)(x)
    return make_cache(out, config.cache_layers, uv, mask, controls, torch.zeros(batch, 5, 3))


# ----------------------------------------------------------------------------- texture


def test_texture_shapes_mask_and_rgb() -> None:
    torch.manual_seed(0)
    texture = NeuralTexture(TINY)
    uv, mask, _ = _frame()
    features = texture(uv, mask, _view())
    assert features.shape == (2, TINY.texture_channels, SIZE, SIZE)
    assert torch.all(features[~mask[:, None].expand_as(features)] == 0)
    rgb = texture.rgb(uv, mask)
    assert rgb.shape == (2, 3, SIZE, SIZE)
    assert torch.equal(rgb, features[:, :3])  # RGB channels are not view dependent
    assert [tuple(p.shape[-2:]) for p in texture.levels] == [(64, 64), (32, 32), (16, 16)]


def test_texture_sums_the_pyramid_levels_bilinearly() -> None:
    torch.manual_seed(0)
    texture = NeuralTexture(replace(TINY, sh_degree=None))
    uv, mask, _ = _frame(1)
    grid = uv * 2 - 1
    expected = sum(
        F.grid_sample(level, grid, mode="bilinear", padding_mode="border", align_corners=False)
        for level in texture.levels
    )
    assert isinstance(expected, torch.Tensor)
    got = texture(uv, mask, _view(1))
    torch.testing.assert_close(got, expected * mask[:, None])


def test_sh_modulates_only_its_channels() -> None:
    torch.manual_seed(0)
    texture = NeuralTexture(TINY)
    uv, mask, _ = _frame(1)
    view = _view(1)
    plain = texture._sample(uv, mask, TINY.texture_channels)
    got = texture(uv, mask, view)
    first, count = TINY.sh_first_channel, 9
    basis = sh_basis(view, 2)[0]
    torch.testing.assert_close(
        got[:, first : first + count], plain[:, first : first + count] * basis[:, None, None]
    )
    torch.testing.assert_close(got[:, :first], plain[:, :first])
    torch.testing.assert_close(got[:, first + count :], plain[:, first + count :])


def test_sh_basis_is_orthonormal_on_the_sphere() -> None:
    # Monte Carlo integral of Y_i Y_j over the sphere ~ identity * 1 (orthonormal real SH).
    gen = torch.Generator().manual_seed(0)
    dirs = F.normalize(torch.randn(200_000, 3, generator=gen, dtype=torch.float64), dim=1)
    basis = sh_basis(dirs, 2)  # (N, 9)
    gram = basis.T @ basis * (4 * math.pi / dirs.shape[0])
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=0.03, rtol=0)


# ----------------------------------------------------------------------------- generator and cache


def test_generator_shapes() -> None:
    torch.manual_seed(0)
    out = Generator(TINY)(torch.rand(2, TINY.generator_in_channels, SIZE, SIZE))
    assert out.rgb.shape == (2, 3, SIZE, SIZE)
    assert out.alpha.shape == (2, 1, SIZE, SIZE)
    assert out.c3.shape == (2, TINY.c3_channels, SIZE // 4, SIZE // 4)
    assert out.c4.shape == (2, TINY.c4_channels, SIZE // 2, SIZE // 2)
    assert out.c5.shape == (2, TINY.c5_channels, SIZE, SIZE)
    for t in (out.rgb.detach(), out.alpha.detach()):
        assert float(t.min()) >= 0 and float(t.max()) <= 1


@pytest.mark.parametrize("layers", LAYER_SETTINGS)
def test_cache_from_a_generator_pass(layers: tuple[str, ...]) -> None:
    cache = _cache(replace(TINY, cache_layers=layers))
    assert cache.c3.shape == (2, TINY.c3_channels, SIZE // 4, SIZE // 4)
    assert (cache.c4 is not None) == ("c4" in layers)
    assert (cache.c5 is not None) == ("c5" in layers)
    assert cache.uv.shape == (2, SIZE, SIZE, 2) and cache.mask.shape == (2, SIZE, SIZE)
    assert cache.controls.shape == (2, TINY.control_dim)


def test_generator_input_appends_the_mask() -> None:
    _, mask, _ = _frame()
    features = torch.rand(2, TINY.texture_channels, SIZE, SIZE)
    x = generator_input(features, mask)
    assert x.shape == (2, TINY.generator_in_channels, SIZE, SIZE)
    assert torch.equal(x[:, -1].bool(), mask)


# ----------------------------------------------------------------------------- warps


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
@pytest.mark.parametrize("layers", LAYER_SETTINGS)
def test_warps_run_with_every_cache_setting(kind: str, layers: tuple[str, ...]) -> None:
    config = replace(TINY, warp_kind=kind, cache_layers=layers)  # type: ignore[arg-type]
    cache = _cache(config)
    torch.manual_seed(0)
    warp = make_warp(config)
    assert isinstance(warp, ImplicitWarp if kind == "implicit" else ExplicitWarp)
    uv, mask, controls = _frame()
    out = warp(cache, uv, mask, controls, identity_motion(2, SIZE, SIZE, torch.device("cpu")))
    assert out.rgb.shape == (2, 3, SIZE, SIZE) and out.alpha.shape == (2, 1, SIZE, SIZE)
    assert torch.isfinite(out.rgb).all() and torch.isfinite(out.alpha).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_implicit_warps_two_forms_of_the_mesh_change_agree(dtype: torch.dtype) -> None:
    """Pooling each map then differencing (torch) and pooling the difference (the exported form)
    are the same block means; only rounding differs."""
    torch.manual_seed(0)
    warp = make_warp(TINY).eval().to(dtype)
    assert isinstance(warp, ImplicitWarp) and warp.pool_each
    cache = _cache(TINY)
    cache = NeuralCache(
        c3=cache.c3.to(dtype),
        c4=None if cache.c4 is None else cache.c4.to(dtype),
        c5=None if cache.c5 is None else cache.c5.to(dtype),
        uv=cache.uv,
        mask=cache.mask,
        controls=cache.controls.to(dtype),
        screen=cache.screen,
    )
    uv, mask, controls = _frame(seed=3)
    with torch.no_grad():
        each = warp(cache, uv, mask, controls.to(dtype))
        warp.pool_each = False
        whole = warp(cache, uv, mask, controls.to(dtype))
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(each.rgb.float(), whole.rgb.float(), atol=tolerance)
    assert torch.allclose(each.alpha.float(), whole.alpha.float(), atol=tolerance)
    # A served cache carries its side's block means: the warp reads them instead of pooling the
    # cached maps again, and draws the same picture.
    warp.pool_each = True
    with_blocks = replace(cache, blocks=block_means(cache.uv, cache.mask))
    with torch.no_grad():
        served = warp(with_blocks, uv, mask, controls.to(dtype))
    assert torch.allclose(served.rgb.float(), each.rgb.float(), atol=1e-6)
    assert torch.allclose(served.alpha.float(), each.alpha.float(), atol=1e-6)


def test_block_means_are_the_4x4_means_of_uv_and_coverage() -> None:
    uv, mask, _ = _frame()
    blocks = block_means(uv, mask)
    assert blocks.shape == (2, 3, SIZE // 4, SIZE // 4) and blocks.dtype == torch.float32
    expected_u = uv[..., 0].reshape(2, SIZE // 4, 4, SIZE // 4, 4).mean(dim=(2, 4))
    coverage = mask.float().reshape(2, SIZE // 4, 4, SIZE // 4, 4).mean(dim=(2, 4))
    assert torch.allclose(blocks[:, 0], expected_u, atol=1e-6)
    assert torch.allclose(blocks[:, 2], coverage, atol=1e-7)
    config = replace(TINY)
    out = Generator(config)(torch.rand(2, config.generator_in_channels, SIZE, SIZE))
    cache = make_cache(out, config.cache_layers, uv, mask, _frame()[2], uv[:, :1, 0], blocks=True)
    assert cache.blocks is not None and torch.equal(cache.blocks, blocks)


def test_warp_rejects_a_cache_without_its_layers() -> None:
    cache = _cache(replace(TINY, cache_layers=("c3",)))
    uv, mask, controls = _frame()
    with pytest.raises(ValueError, match="no c4"):
        ImplicitWarp(TINY)(cache, uv, mask, controls)


def test_explicit_warp_needs_the_motion() -> None:
    cache = _cache(TINY)
    uv, mask, controls = _frame()
    with pytest.raises(ValueError, match="pixel motion"):
        ExplicitWarp(TINY)(cache, uv, mask, controls)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_identity_motion_keeps_features_in_place(factor: int) -> None:
    torch.manual_seed(0)
    motion = identity_motion(2, SIZE, SIZE, torch.device("cpu"))
    grid, valid = pool_motion(motion, factor)
    assert grid.shape == (2, SIZE // factor, SIZE // factor, 2) and bool(valid.all())
    features = torch.randn(2, 5, SIZE // factor, SIZE // factor)
    moved = warp_features(features, grid, valid)
    assert moved.shape == (2, 6, SIZE // factor, SIZE // factor)
    torch.testing.assert_close(moved[:, :5], features, atol=1e-5, rtol=0)
    assert torch.all(moved[:, 5] == 0)


def test_invalid_pixels_are_marked_and_zeroed() -> None:
    motion = identity_motion(1, SIZE, SIZE, torch.device("cpu"))
    valid = motion.valid.clone()
    valid[:, 10:20, 30:37] = False
    grid, coarse_valid = pool_motion(PixelMotion(grid=motion.grid, valid=valid), 4)
    # Min-pooling: a coarse pixel with any invalid fine pixel is invalid (rows 2..4, cols 7..9).
    expected = torch.ones(1, SIZE // 4, SIZE // 4, dtype=torch.bool)
    expected[:, 2:5, 7:10] = False
    assert torch.equal(coarse_valid, expected)
    features = torch.randn(1, 3, SIZE // 4, SIZE // 4) + 5.0  # never zero by chance
    moved = warp_features(features, grid, coarse_valid)
    invalid = ~coarse_valid[:, None]
    assert torch.all(moved[:, :3][invalid.expand(-1, 3, -1, -1)] == 0)
    assert torch.equal(moved[:, 3:] == 1, invalid)


def test_explicit_warp_follows_a_shift() -> None:
    """Features moved one coarse pixel right by the motion read their left neighbour."""
    motion = identity_motion(1, SIZE, SIZE, torch.device("cpu"))
    shift = torch.tensor([2.0 * 4 / SIZE, 0.0])  # 4 full-res pixels = 1 pixel at H/4
    grid, valid = pool_motion(PixelMotion(grid=motion.grid - shift, valid=motion.valid), 4)
    features = torch.randn(1, 3, SIZE // 4, SIZE // 4)
    moved = warp_features(features, grid, valid)
    torch.testing.assert_close(moved[:, :3, :, 1:], features[:, :, :, :-1], atol=1e-5, rtol=0)


def _randomise_batch_norms(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Running statistics and affine parameters far from the identity, as after training."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            assert bn.running_mean is not None and bn.running_var is not None
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(n, generator=gen))
                bn.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.2)
                bn.weight.copy_(torch.randn(n, generator=gen))
                bn.bias.copy_(torch.randn(n, generator=gen))


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_preparation_keeps_the_outputs(kind: str, channels_last: bool) -> None:
    """Folded BatchNorms and channels_last give the eval-mode networks' outputs."""
    config = replace(TINY, warp_kind=kind)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    generator, warp = Generator(config), make_warp(config)
    _randomise_batch_norms(generator, gen)
    _randomise_batch_norms(warp, gen)
    uv, mask, controls = _frame()
    x = torch.rand(2, config.generator_in_channels, SIZE, SIZE, generator=gen)
    motion = identity_motion(2, SIZE, SIZE, torch.device("cpu"))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    results = []
    with torch.inference_mode():
        for prepared in (False, True):
            if prepared:
                prepare_for_inference(generator, channels_last=channels_last)
                prepare_for_inference(warp, channels_last=channels_last)
                assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules())
            else:
                generator.eval()
                warp.eval()
            out = generator(
                x.contiguous(memory_format=memory_format if prepared else torch.contiguous_format)
            )
            cache = make_cache(out, config.cache_layers, uv, mask, controls, torch.zeros(2, 1, 3))
            results.append((out.rgb, out.c3, warp(cache, uv, mask, controls, motion).rgb))
    for before, after in zip(*results, strict=True):
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-3)


def test_batch_norms_only_fold_in_eval_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batch_norms(Generator(TINY).train())


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_gradients_reach_every_network(kind: str) -> None:
    config = replace(TINY, warp_kind=kind)  # type: ignore[arg-type]
    torch.manual_seed(0)
    texture, generator, warp = NeuralTexture(config), Generator(config), make_warp(config)
    uv, mask, controls = _frame()
    out = generator(generator_input(texture(uv, mask, _view()), mask))
    cache = make_cache(out, config.cache_layers, uv, mask, controls, torch.zeros(2, 1, 3))
    uv2, mask2, controls2 = _frame(seed=3)
    motion = identity_motion(2, SIZE, SIZE, torch.device("cpu"))
    warped = warp(cache, uv2, mask2, controls2, motion)
    loss = out.rgb.mean() + warped.rgb.mean() + warped.alpha.mean()
    loss.backward()
    for name, net in (("texture", texture), ("generator", generator), ("warp", warp)):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None for g in grads), f"{name} has parameters without a gradient"
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, name


def _target() -> torch.Tensor:
    """(1, 3, H, W) a smooth synthetic image: a colour ramp left to right."""
    ramp = torch.linspace(0.1, 0.9, SIZE).expand(SIZE, SIZE)  # (H, W)
    return torch.stack((ramp, 1 - ramp, 0.5 * ramp + 0.25))[None]  # (1, 3, H, W)


def _fit(params: list[torch.nn.Parameter], loss_fn: object, steps: int = 10) -> tuple[float, float]:
    assert callable(loss_fn)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    first = last = 0.0
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        if step == 0:
            first = float(loss.detach())
        last = float(loss.detach())
    return first, last


def test_generator_path_learns_a_target() -> None:
    torch.manual_seed(0)
    texture, generator = NeuralTexture(TINY), Generator(TINY)
    uv, mask, _ = _frame(1)
    target = _target()

    def loss() -> torch.Tensor:
        out = generator(generator_input(texture(uv, mask, _view(1)), mask))
        return F.l1_loss(out.rgb, target)

    first, last = _fit([*texture.parameters(), *generator.parameters()], loss)
    assert last < first * 0.9


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_warp_path_learns_a_target(kind: str) -> None:
    config = replace(TINY, warp_kind=kind)  # type: ignore[arg-type]
    with torch.no_grad():
        cache = _cache(config, batch=1)
    torch.manual_seed(0)
    warp = make_warp(config)
    uv, mask, controls = _frame(1, seed=4)
    motion = identity_motion(1, SIZE, SIZE, torch.device("cpu"))
    target = _target()

    def loss() -> torch.Tensor:
        return F.l1_loss(warp(cache, uv, mask, controls, motion).rgb, target)

    first, last = _fit(list(warp.parameters()), loss)
    assert last < first * 0.9


# ----------------------------------------------------------------------------- config and MACs


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution": 0}, "resolution must be a positive integer"),
        ({"resolution": 68}, "divisible by 8"),
        ({"generator_widths": (8, 16, 32)}, "at least 4 levels"),
        ({"warp_widths": (8, 8)}, "warp_widths must be 3"),
        ({"warp_kind": "magic"}, "warp_kind must be one of"),
        ({"cache_layers": ("c3", "c5")}, "cache_layers must be one of"),
        ({"cache_layers": ("c4",)}, "cache_layers must be one of"),
        ({"texture_channels": 8}, "SH channels 3..11"),
        ({"sh_degree": 3}, "sh_degree must be None or 0..2"),
        ({"sh_first_channel": 1}, "after the RGB channels"),
        ({"texture_size": 98}, "texture_size 98 must be divisible by 4"),
    ],
)
def test_config_validation_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(TINY, **changes)  # type: ignore[arg-type]


def test_config_round_trip() -> None:
    for config in PRESETS.values():
        text = json.dumps(config.to_dict())
        assert RendererConfig.from_dict(json.loads(text)) == config
    with pytest.raises(ValueError, match="unknown renderer config keys"):
        RendererConfig.from_dict({"resolution": 64, "wings": 2})


def test_macs_are_counted() -> None:
    counts = macs(TINY)
    assert all(v > 0 for v in counts.values())
    assert counts["warp"] == counts["warp_implicit"] < counts["generator"]


def test_paper_preset_matches_the_paper() -> None:
    counts = macs(PRESETS["paper"])
    assert abs(counts["generator"] / PAPER_GENERATOR_MACS - 1) < 0.15
    assert abs(counts["warp"] / PAPER_WARP_MACS - 1) < 0.15


def test_cpu_preset_is_a_real_unet_and_a_cheap_warp() -> None:
    counts = macs(PRESETS["cpu"])
    assert 1.5e9 <= counts["generator"] <= 4e9
    assert counts["generator"] >= 3.3 * counts["warp"]


def test_a_control_conditioned_generator_follows_the_controls() -> None:
    config = replace(TINY, generator_control_dim=4)
    torch.manual_seed(0)
    generator = Generator(config).eval()
    x = torch.rand(1, config.generator_in_channels, SIZE, SIZE)
    a, b = torch.zeros(1, config.control_dim), torch.ones(1, config.control_dim)
    with torch.no_grad():
        assert not torch.allclose(generator(x, a).rgb, generator(x, b).rgb)
        with pytest.raises(ValueError, match="conditioned"):
            generator(x)
    assert macs(config)["generator"] > macs(TINY)["generator"]
    with pytest.raises(ValueError, match="generator_control_dim"):
        replace(TINY, generator_control_dim=-1)
