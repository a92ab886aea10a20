"""bench.soak, short: a real server process, a WebRTC viewer streaming for seconds, DESIGN's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import soak
from tests.conftest import save_untrained_avatar


@pytest.fixture(scope="module")
def avatar_256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("soak") / "avatar.pt"
    return save_untrained_avatar(path, resolution=256)


def test_short_soak_reports_per_minute_rows(avatar_256: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["--avatar", str(avatar_256), "--minutes", "0.1", "--bucket-seconds", "2"]
    assert soak.main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"per_minute", "p95_drift", "rss_growth", "restarts", "errors"} <= set(report)
    rows = report["per_minute"]
    assert 2 <= len(rows) <= 3  # 6 s in 2 s rows; the last may end with the run
    for row in rows:
        assert {"minute", "mtp_ms_p50", "mtp_ms_p95", "rss_mb", "fps"} <= set(row)
        assert row["fps"] > 0 and row["rss_mb"] > 0
        assert 0 < row["mtp_ms_p50"] <= row["mtp_ms_p95"]
    assert report["restarts"] == 0 and report["errors"] == 0
