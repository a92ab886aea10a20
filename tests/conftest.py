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
