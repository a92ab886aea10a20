"""bench.engine writes the DESIGN.md JSON keys for every stage of a frame (a few frames only: speed
is the benchmark's business, not the tests')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import engine as bench_engine
from bench.raster_timing import time_raster
from tests.conftest import save_untrained_avatar

RENDER_KEYS = {
    "preset",
    "resolution",
    "stages_ms",
    "generator_ms",
    "warp_ms",
    "speedup",
    "generator_gmac",
    "warp_gmac",
    "full_frame_ms",
    "warped_frame_ms",
}


def test_json_has_the_contract_keys(tmp_path: Path) -> None:
    avatar_path = tmp_path / "tiny.pt"
    save_untrained_avatar(avatar_path)
    out = tmp_path / "engine.json"
    argv = ["--json", str(out), "--frames", "3", "--resolutions", "64", "128"]
    argv += ["--backend-cache", str(tmp_path / "backends")]
    assert bench_engine.main([*argv, "--presets", "tiny", "--avatar", str(avatar_path)]) == 0
    report = json.loads(out.read_text())
    assert {"device", "torch", "threads", "runs", "modes", "cpu", "backend"} <= set(report)
    # The avatar file's run goes through the backend chosen by measurement, and says which.
    assert report["backend"]["source"] == "measured" and report["backend"]["candidates"]
    keys = ("runtime", "precision", "generator", "warp", "texture", "label")
    chosen = {k: report["backend"][k] for k in keys}
    assert report["runs"][0]["backend"] == chosen
    assert set(report["cpu"]) == {"model", "flags"} and "avx512_bf16" in report["cpu"]["flags"]
    render, *mesh_only = report["runs"]
    assert set(render) >= RENDER_KEYS
    assert render["preset"] == "tiny" and render["weights"] == str(avatar_path)
    assert set(render["stages_ms"]) == set(bench_engine.STAGES)
    assert all(v > 0 for v in render["stages_ms"].values())
    assert render["speedup"] == pytest.approx(render["generator_ms"] / render["warp_ms"], rel=0.01)
    assert render["generator_gmac"] > render["warp_gmac"] > 0
    assert render["frame_speedup"] == pytest.approx(
        render["full_frame_ms"] / render["warped_frame_ms"], rel=0.01
    )
    assert [r["resolution"] for r in mesh_only] == [64, 128]
    for run in mesh_only:
        assert set(run["stages_ms"]) == {"head", "uv"}
        assert all(v > 0 for v in run["stages_ms"].values())


def test_a_preset_without_its_avatar_file_is_timed_untrained(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    argv = ["--json", str(out), "--frames", "2", "--resolutions", "64", "--presets", "tiny"]
    with pytest.raises(SystemExit):  # a named file that is absent is refused, not replaced
        bench_engine.main([*argv, "--avatar", str(tmp_path / "absent.pt")])
    assert bench_engine.main(argv) == 0
    (run, _) = json.loads(out.read_text())["runs"]
    assert run["preset"] == "tiny" and run["weights"] == "untrained weights"


def test_a_file_that_is_not_an_avatar_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    argv = ["--json", str(tmp_path / "x.json"), "--frames", "2", "--resolutions", "64"]
    assert bench_engine.main([*argv, "--presets", "tiny", "--avatar", str(bad)]) == 2
    assert not (tmp_path / "x.json").exists()


def test_trajectory_moves() -> None:
    names = tuple(bench_engine.build_default_head().expression_names)
    traj = bench_engine.trajectory(names, 40)
    assert len({c.yaw for c in traj}) > 30 and len({c.expression for c in traj}) > 30


def test_pipeline_needs_an_avatar_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench_engine.main(
            ["--json", str(tmp_path / "x.json"), "--pipeline", "--avatar", str(tmp_path / "no.pt")]
        )


def test_raster_timing_reports_both_rasterisers() -> None:
    run = time_raster(64, batch=1, repeats=2)
    assert run["rasterizer"] in ("compiled", "torch") and run["faces"] == 898
    assert run["rasterize_ms"] > 0 and run["rasterize_torch_ms"] > 0 and run["uv_ms"] > 0
    assert 0.2 < run["coverage"] < 0.9
