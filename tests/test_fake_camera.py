"""The Y4M a browser's fake webcam plays (bench/fake_camera.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fake_camera import write_y4m
from engine.capture.sample import SampleUnavailableError, fetch_sample_video


def test_a_clip_becomes_a_y4m_with_a_faceless_tail(tmp_path: Path) -> None:
    try:
        clip = fetch_sample_video("pexels")
    except SampleUnavailableError as exc:
        pytest.skip(f"sample clip unavailable (network down?): {exc}")
    out = tmp_path / "cam.y4m"
    frames, fps = write_y4m(clip, out, seconds=1.0, width=64, no_face_seconds=0.5)
    assert frames == 24 and fps == pytest.approx(23.976, abs=1e-3)
    data = out.read_bytes()
    header = data.split(b"\n", 1)[0].decode()
    assert header.startswith("YUV4MPEG2 W64 H36 F24000:1001")
    assert data.count(b"FRAME") == 24 + 12
    last = data.rsplit(b"FRAME\n", 1)[1]
    assert len(last) == 64 * 36 * 3 // 2 and set(last[: 64 * 36]) <= {126, 127, 128}  # grey luma
    with pytest.raises(ValueError, match="width must be even"):
        write_y4m(clip, tmp_path / "odd.y4m", seconds=1.0, width=63)
    with pytest.raises(FileNotFoundError):
        write_y4m(tmp_path / "missing.mp4", tmp_path / "none.y4m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.y4m"]  # no half-written file
