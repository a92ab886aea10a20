"""The warp moves its cached skips along a flow it predicts (`RendererConfig.warp_flow`, `train
--warp-flow`): a zero flow copies, a flow moves features the way it says, turned on over a finished
avatar it warps what it warped, and trained on, its flow moves and the avatar renders served."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.capture.store import load_capture
from engine.render.avatar import Avatar
from engine.render.networks import PRESETS
from engine.render.networks.config import RendererConfig
from engine.render.networks.split_warp import SplitWarp
from engine.render.networks.warp import ImplicitWarp, move_along
from engine.training import train as train_module
from tests.conftest import assert_warps_as_before, continued_with


def test_a_zero_flow_copies_and_a_flow_moves_the_features_it_names() -> None:
    features = torch.rand(2, 3, 16, 16)
    still = move_along(features, torch.zeros(2, 2, 4, 4))
    torch.testing.assert_close(still, features)
    # bfloat16 features (a bf16 backend's cache) come back in their type, not NaN.
    half = features.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    copied = move_along(half, torch.zeros(2, 2, 4, 4, dtype=torch.bfloat16))
    assert copied.dtype == torch.bfloat16 and torch.equal(copied, half)
    # An offset of two pixels in x (normalised: 2 * 2 / 16): each pixel reads two to its right.
    moved = move_along(
        features, torch.full((2, 2, 4, 4), 0.25) * torch.tensor([1.0, 0.0])[:, None, None]
    )
    torch.testing.assert_close(moved[..., :13], features[..., 2:15])


def test_the_flow_is_the_implicit_warps_and_round_trips() -> None:
    config = dataclasses.replace(PRESETS["tiny"], warp_flow=True)
    assert RendererConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="warp_flow is the implicit warp's"):
        dataclasses.replace(config, warp_kind="explicit")
    with pytest.raises(ValueError, match="warp_flow must be true or false"):
        dataclasses.replace(config, warp_flow=1)  # type: ignore[arg-type]


def test_the_flow_is_turned_on_over_a_finished_avatar(short_capture: Path, tmp_path: Path) -> None:
    settings = train_module.TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3", "c4", "c5"), warp_kind="implicit",
    )  # fmt: skip
    first, same = continued_with(short_capture, tmp_path, settings, warp_flow=True, warp_only=True)
    assert same.config.warp_flow
    # Its flow starts at zero: the continued avatar warps what it warped.
    assert_warps_as_before(first, same, load_capture(short_capture), torch.tensor([0, 2]), 1e-5)
    flowing = dataclasses.replace(settings, warp_flow=True, warp_only=True, steps=4)
    cpu = torch.device("cpu")
    train_module.train(
        short_capture, tmp_path / "on.pt", flowing, cpu,
        progress=False, init=tmp_path / "same.pt",
    )  # fmt: skip
    loaded = Avatar.load(tmp_path / "on.pt")
    flow = loaded.warp_net.trunk.flow
    assert flow is not None and flow.weight.abs().sum() > 0
    warp = loaded.warp_net
    assert isinstance(warp, ImplicitWarp) and not SplitWarp.splits(warp)  # nothing kept per cache
    picture = loaded.render(loaded.rest)
    assert picture.shape == (loaded.resolution, loaded.resolution, 3)
    with pytest.raises(ValueError, match=r"other settings: \['warp_flow'\]"):
        train_module.train(
            short_capture, tmp_path / "x.pt", dataclasses.replace(settings, steps=4), cpu,
            progress=False, init=tmp_path / "same.pt",
        )  # fmt: skip
