"""Shared fixtures: a short real capture for the renderer's tests (the sample clip's first frames
at 64^2, captured once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import capture

SHORT_FRAMES = 40
SHORT_RESOLUTION = 64


@pytest.fixture(scope="session")
def short_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        video = capture.fetch_sample_video()
    except capture.SampleUnavailableError as exc:
        pytest.skip(f"sample clip unavailable (network down?): {exc}")
    out = tmp_path_factory.mktemp("short") / "capture"
    capture.capture_video(video, out, resolution=SHORT_RESOLUTION, max_frames=SHORT_FRAMES)
    return out
