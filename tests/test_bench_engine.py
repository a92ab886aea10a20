"""bench.engine writes the DESIGN.md JSON keys for the stages built so far (a few frames only:
speed is the benchmark's business, not the tests')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import engine as bench_engine


def test_json_has_the_contract_keys(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    assert (
        bench_engine.main(["--json", str(out), "--frames", "3", "--resolutions", "64", "128"]) == 0
    )
    report = json.loads(out.read_text())
    assert {"device", "torch", "threads", "runs", "modes"} <= set(report)
    assert [r["resolution"] for r in report["runs"]] == [64, 128]
    for run in report["runs"]:
        assert set(run["stages_ms"]) == {"head", "uv"}  # stages not built yet are absent
        assert all(v > 0 for v in run["stages_ms"].values())


def test_trajectory_moves() -> None:
    names = tuple(bench_engine.build_default_head().expression_names)
    traj = bench_engine.trajectory(names, 40)
    assert len({c.yaw for c in traj}) > 30 and len({c.expression for c in traj}) > 30


def test_not_built_modes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench_engine.main(["--json", str(tmp_path / "x.json"), "--pipeline"])
