"""Training the warp alone over a finished avatar (`engine train --warp-only --init`): only the
warp's weights move, the generator's pictures stay exactly as they were, and the command line
refuses it without an avatar to start from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.training import train as train_module


def test_the_warp_alone_learns_and_the_rest_keeps_its_weights(
    short_capture: Path, tmp_path: Path
) -> None:
    settings = train_module.TrainSettings(
        preset="tiny", steps=3, max_minutes=5.0, batch=2, max_k=3, lr=1e-3, seed=1,
        cache_layers=("c3", "c4", "c5"), warp_kind="implicit",
    )  # fmt: skip
    cpu = torch.device("cpu")
    first = train_module.train(short_capture, tmp_path / "first.pt", settings, cpu, progress=False)
    warp_only = dataclasses.replace(settings, steps=6, warp_only=True, min_k=2, lr=1e-2)
    second = train_module.train(
        short_capture, tmp_path / "second.pt", warp_only, cpu, progress=False,
        init=tmp_path / "first.pt",
    )  # fmt: skip
    before, after = first.state_dict(), second.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("warp_net.") for k in moved), sorted(moved)
    # BatchNorm statistics of the generator included: its caches were made as served.
    assert not any(k.startswith(("generator.", "texture.", "background")) for k in moved)
    stages = second.summary["stages"]
    assert stages[-1]["warp_only"] and stages[-1]["min_k"] == 2


def test_warp_only_needs_an_avatar_to_start_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_module.main(["--data", "x", "--out", "y", "--warp-only"])
    assert "give --init" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_module.main(["--data", "x", "--out", "y", "--min-k", "9", "--max-k", "8"])
    assert "--min-k must be in 1..--max-k" in capsys.readouterr().err
