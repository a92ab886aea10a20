"""Shared fixtures: a short real capture for the renderer's tests (the sample clip's first frames
at 64^2, captured once per test session)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engine.capture.capture import capture_video
from engine.capture.sample import SampleUnavailableError, fetch_sample_video

SHORT_FRAMES = 40
SHORT_RESOLUTION = 64


@pytest.fixture(scope="session")
def short_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        video = fetch_sample_video("pexels")
    except SampleUnavailableError as exc:
        pytest.skip(f"sample clip unavailable (network down?): {exc}")
    out = tmp_path_factory.mktemp("short") / "capture"
    capture_video(video, out, resolution=SHORT_RESOLUTION, max_frames=SHORT_FRAMES, progress=False)
    return out


def save_untrained_avatar(
    path: Path, resolution: int | None = None, summary: dict[str, Any] | None = None
) -> Path:
    """An avatar with the tiny preset's untrained networks (at `resolution` if given), the
    default head and `summary` (what training would have recorded), saved to `path`: what the
    server, pipeline and benchmark tests render with."""
    import torch

    from engine.camera import Camera
    from engine.head.default import build_default_head
    from engine.render.avatar import Avatar
    from engine.render.networks import PRESETS

    config = (
        PRESETS["tiny"] if resolution is None else replace(PRESETS["tiny"], resolution=resolution)
    )
    torch.manual_seed(0)
    camera = Camera(fx=2.0, fy=2.0)
    avatar = Avatar(config, build_default_head(), camera, torch.tensor([0.0, 0.0, -50.0]))
    avatar.summary = dict(summary or {})
    avatar.save(path)
    return path


def continued_with(
    short_capture: Path, tmp_path: Path, settings: Any, **changes: Any
) -> tuple[Any, Any]:
    """A tiny avatar trained on the short capture with `settings` (first.pt), and the same
    continued from that file (`--init`, same.pt) with `changes` made to the settings (a part
    turned on, the warp alone, fewer steps): the two avatars."""
    import dataclasses

    import torch

    from engine.training import train as train_module

    cpu = torch.device("cpu")
    first = train_module.train(short_capture, tmp_path / "first.pt", settings, cpu, progress=False)
    same = train_module.train(
        short_capture, tmp_path / "same.pt", dataclasses.replace(settings, **changes), cpu,
        progress=False, init=tmp_path / "first.pt",
    )  # fmt: skip
    return first, same


def assert_warps_as_before(
    first: Any, same: Any, capture: Any, rows: Any, atol: float = 0.0
) -> None:
    """`same`, an avatar continued from `first` with a warp part whose weights start at zero
    (the framing it reads, its flow), warps the captured frames at `rows` + 1 from caches of
    `rows` as `first` did (to `atol`; 0: exactly)."""
    import torch

    from engine.training.evaluate import capture_frames

    frames = capture_frames(first.eval(), capture)
    with torch.inference_mode():
        _, cache = first.generate(frames.inputs(rows))
        before = first.warp(cache, frames.inputs(rows + 1)).image
        _, cache = same.eval().generate(frames.inputs(rows))
        after = same.warp(cache, frames.inputs(rows + 1)).image
    torch.testing.assert_close(after, before, atol=atol, rtol=0.0)


def assert_draws_as_before(first: Any, same: Any, capture: Any, rows: Any) -> None:
    """`same`, an avatar continued from `first` with a part whose weights start at zero (the
    mirror mark, the body), draws on the captured frames at `rows` (as filmed, each with its own
    framing) exactly what `first` drew."""
    import torch

    from engine.training.evaluate import capture_frames

    before_frames = capture_frames(first.eval(), capture)
    after_frames = capture_frames(same.eval(), capture)
    with torch.inference_mode():
        before = first.generate(before_frames.inputs(rows))[0].image
        after = same.generate(after_frames.inputs(rows))[0].image
    assert torch.equal(before, after)
