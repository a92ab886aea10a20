"""The warp reads the framing too (`RendererConfig.warp_framing`, `train --warp-framing`): turned
on over a finished avatar it warps what it warped, captured frames give it their own framing and
their cache's, and a served frame the framing its controls predict, in every form of the warp."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.capture.store import load_capture
from engine.render.avatar import Avatar
from engine.render.networks import PRESETS, Generator, make_cache
from engine.render.networks.config import RendererConfig
from engine.render.networks.inference import prepare_for_inference
from engine.render.networks.split_warp import SplitWarp
from engine.render.networks.warp import ImplicitWarp
from engine.training import train as train_module
from engine.training.continuation import extend_framing
from engine.training.evaluate import capture_frames
from tests.conftest import assert_warps_as_before, continued_with

P = 5  # framing numbers in these tests
CONFIG = dataclasses.replace(
    PRESETS["tiny"], generator_control_dim=8, generator_framing=P, warp_framing=True
)
SIZE = CONFIG.resolution
D = CONFIG.control_dim


def _warp_with_framing(seed: int = 0) -> ImplicitWarp:
    """An implicit warp prepared for inference whose FiLM and framing weights are not zero."""
    torch.manual_seed(seed)
    warp = ImplicitWarp(CONFIG)
    with torch.no_grad():
        warp.trunk.film.weight.normal_(0.0, 0.2)
        framing = warp.trunk.embedding.framing
        assert framing is not None
        framing.weight.normal_(0.0, 0.5)
    return prepare_for_inference(warp, channels_last=True)


def _frame(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[:, 16:48, 12 + seed : 44 + seed] = True
    uv = torch.rand(2, SIZE, SIZE, 2, generator=gen) * mask[..., None]
    return uv, mask, torch.rand(2, D, generator=gen)


def test_the_warp_framing_needs_the_generators() -> None:
    with pytest.raises(ValueError, match="warp_framing reads the generator's framing"):
        dataclasses.replace(PRESETS["tiny"], warp_framing=True)
    with pytest.raises(ValueError, match="warp_framing must be true or false"):
        dataclasses.replace(CONFIG, warp_framing=1)  # type: ignore[arg-type]
    assert RendererConfig.from_dict(CONFIG.to_dict()) == CONFIG


def test_the_warp_reads_where_the_body_moved_and_a_served_frame_reads_it_from_its_controls() -> (
    None
):
    warp = _warp_with_framing()
    controls = _frame(1)[2]
    with torch.no_grad():
        x = torch.rand(2, CONFIG.generator_in_channels, SIZE, SIZE)
        out = Generator(CONFIG).eval()(x, controls)
    still, moved = torch.zeros(2, P), torch.zeros(2, P)
    moved[:, -1] = 1.5  # the shoulders rose since the cached frame
    cache = make_cache(out, CONFIG.cache_layers, *_frame(0), torch.zeros(2, 5, 3), framing=still)
    new_uv, new_mask, new_controls = _frame(2)
    with torch.inference_mode():
        a = warp(cache, new_uv, new_mask, new_controls, framing=still)
        b = warp(cache, new_uv, new_mask, new_controls, framing=moved)
    assert not torch.allclose(a.rgb, b.rgb)
    # Served: no framing anywhere, the served fit makes it from both frames' controls.
    served = torch.randn(P, D + 1, generator=torch.Generator().manual_seed(3))
    warp.trunk.embedding.served_framing = served
    plain = dataclasses.replace(cache, framing=None)
    cached = cache.controls @ served[:, :-1].T + served[:, -1]
    by_hand_cache = dataclasses.replace(cache, framing=cached)
    new = new_controls @ served[:, :-1].T + served[:, -1]
    split = SplitWarp(warp)
    with torch.inference_mode():
        by_controls = warp(plain, new_uv, new_mask, new_controls)
        by_hand = warp(by_hand_cache, new_uv, new_mask, new_controls, framing=new)
        by_split = split(plain, split.terms(plain), new_uv, new_mask, new_controls)
    torch.testing.assert_close(by_controls.rgb, by_hand.rgb)
    torch.testing.assert_close(by_split.rgb, by_controls.rgb, atol=1e-5, rtol=1e-4)
    warp.trunk.embedding.served_framing = None  # no fit: framing 0, the training median
    with torch.inference_mode():
        at_median = warp(plain, new_uv, new_mask, new_controls)
    assert not torch.allclose(at_median.rgb, by_controls.rgb)


def test_a_wider_framing_widens_each_half_of_the_warps_weights() -> None:
    key = "warp_net.trunk.embedding.framing.weight"
    old = torch.arange(8.0).view(2, 4)  # hidden 2, [framing (2), change (2)]
    wider = extend_framing({key: old}, {key: torch.zeros(2, 6)})[key]
    assert wider.tolist() == [[0, 1, 0, 2, 3, 0], [4, 5, 0, 6, 7, 0]]


def test_the_warp_framing_is_turned_on_over_a_finished_avatar(
    short_capture: Path, tmp_path: Path
) -> None:
    settings = train_module.TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3", "c4"), warp_kind="implicit", generator_controls=8, framing=True,
        body=True,
    )  # fmt: skip
    first, same = continued_with(
        short_capture, tmp_path, settings, warp_framing=True, warp_only=True
    )
    assert same.config.warp_framing
    capture = load_capture(short_capture)
    rows = torch.tensor([0, 2])
    with torch.inference_mode():
        _, cache = same.eval().generate(capture_frames(same, capture).inputs(rows))
    assert cache.framing is not None
    assert cache.framing.shape == (2, same.config.generator_framing)
    # Its framing weights start at zero: the continued avatar warps what it warped.
    assert_warps_as_before(first, same, capture, rows)
    framed = dataclasses.replace(settings, warp_framing=True, warp_only=True)
    cpu = torch.device("cpu")
    # Trained on, its framing weights move, and served frames read the body from the pose.
    train_module.train(
        short_capture, tmp_path / "on.pt", dataclasses.replace(framed, steps=4), cpu,
        progress=False, init=tmp_path / "same.pt",
    )  # fmt: skip
    loaded = Avatar.load(tmp_path / "on.pt")
    embedding = loaded.warp_net.trunk.embedding
    assert embedding.framing is not None and embedding.framing.weight.abs().sum() > 0
    served = loaded.generator.served_framing
    assert embedding.served_framing is not None and served is not None
    assert torch.equal(embedding.served_framing, served)
    with pytest.raises(ValueError, match=r"other settings: \['warp_framing'\]"):
        train_module.train(
            short_capture, tmp_path / "x.pt", dataclasses.replace(settings, steps=4), cpu,
            progress=False, init=tmp_path / "same.pt",
        )  # fmt: skip


def test_the_warp_framing_needs_the_framing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_module.main(["--data", "x", "--out", "y", "--warp-framing"])
    assert "--warp-framing needs --framing" in capsys.readouterr().err
