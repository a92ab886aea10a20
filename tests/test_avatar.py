"""Avatar, training and evaluation on the tiny preset and a short real capture."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.capture.sample import SampleUnavailableError, fetch_sample_video
from engine.capture.store import load_capture
from engine.controls import neutral, update
from engine.head.default import build_default_head
from engine.head.model import HeadModel
from engine.render.avatar import AVATAR_VERSION, Avatar
from engine.render.networks import PRESETS
from engine.training import compare as compare_module
from engine.training import evaluate as evaluate_module
from engine.training.dataset import CaptureFrames
from engine.training.served_warps import SERVED_MOVES
from engine.training.split import interleaved_split
from engine.training.step import train_step
from engine.training.train import TrainSettings, lr_factor, make_optimizer, train


def _tiny_avatar(capture_dir: Path, **changes: Any) -> tuple[Avatar, CaptureFrames]:
    data = load_capture(capture_dir)
    config = dataclasses.replace(PRESETS["tiny"], **changes)
    head_data = build_default_head()
    frames = CaptureFrames(data, HeadModel(head_data), config.resolution)
    avatar = Avatar(
        config, head_data, data.camera, frames.median_translation(np.arange(len(frames)))
    )
    frames.head = avatar.head
    return avatar, frames


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_generate_and_warp_shapes(short_capture: Path, kind: str) -> None:
    avatar, frames = _tiny_avatar(short_capture, warp_kind=kind)
    r = avatar.resolution
    with torch.inference_mode():
        x = frames.inputs(torch.tensor([3, 4]))
        full, cache = avatar.generate(x)
        warped = avatar.warp(cache, frames.inputs(torch.tensor([5, 6])))
    assert full.image.shape == warped.image.shape == (2, 3, r, r)
    assert cache.c3.shape[-1] == r // 4 and cache.uv.shape == (2, r, r, 2)


def test_live_controls_render(short_capture: Path) -> None:
    avatar, _ = _tiny_avatar(short_capture)
    names = avatar.expression_names
    c = update(
        neutral(names), names, expression={"jawOpen": 0.7}, pose={"yaw": 15}, view={"yaw": 20}
    )
    with torch.inference_mode():
        x = avatar.inputs([c])
        full, _ = avatar.generate(x)
    assert full.image.shape == (1, 3, avatar.resolution, avatar.resolution)
    assert bool(x.mask.any())
    # An avatar that knows its trained pose range holds poses past it at the edge.
    avatar.summary["pose_range_deg"] = {"yaw": [-10.0, 10.0], "pitch": [-5.0, 5.0]}
    with torch.inference_mode():
        held = avatar.inputs([c]).uv
        edge = avatar.inputs([dataclasses.replace(c, yaw=10.0)]).uv
    assert torch.equal(held, edge)


def test_training_steps_lower_the_loss(short_capture: Path) -> None:
    torch.manual_seed(0)
    avatar, frames = _tiny_avatar(short_capture)
    optimizer = make_optimizer(avatar, lr=3e-3)
    t, tk = torch.tensor([2, 5, 9, 12]), torch.tensor([3, 7, 10, 13])
    settings = TrainSettings(
        preset="tiny", steps=16, max_minutes=5.0, batch=4, max_k=4, lr=3e-3, seed=0,
        cache_layers=("c3", "c4", "c5"), warp_kind="implicit",
    )  # fmt: skip
    cpu = torch.device("cpu")
    first = train_step(avatar, optimizer, frames, t, tk, None, cpu, settings)
    for _ in range(15):
        last = train_step(avatar, optimizer, frames, t, tk, None, cpu, settings)
    assert last[0] < first[0] and last[1] < first[1]


def test_save_load_round_trip_and_bad_files(short_capture: Path, tmp_path: Path) -> None:
    avatar, frames = _tiny_avatar(short_capture)
    path = tmp_path / "a.pt"
    avatar.summary = {"note": "test"}
    avatar.eval().save(path)
    again = Avatar.load(path)
    with torch.inference_mode():
        x = frames.inputs(torch.tensor([1]))
        torch.testing.assert_close(avatar.generate(x)[0].image, again.generate(x)[0].image)
    assert again.summary == {"note": "test"} and again.expression_names == avatar.expression_names
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not an avatar")
    with pytest.raises(ValueError, match="is not an avatar file"):
        Avatar.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "neural-avatar", "version": AVATAR_VERSION + 1}, other)
    with pytest.raises(ValueError, match="version"):
        Avatar.load(other)
    with pytest.raises(FileNotFoundError):
        Avatar.load(tmp_path / "missing.pt")
    avatar.summary = {"rest_expression": {"notAnExpression": 0.5}}
    avatar.save(path)
    with pytest.raises(ValueError, match=r"damaged avatar file.*notAnExpression"):
        Avatar.load(path)


def test_train_resume_and_evaluate(short_capture: Path, tmp_path: Path) -> None:
    try:
        fetch_sample_video("cap13")
    except SampleUnavailableError as exc:
        pytest.skip(f"the webcam clip for the read-back cannot be fetched here: {exc}")
    out = tmp_path / "tiny.pt"
    settings = TrainSettings(
        preset="tiny", steps=4, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3", "c4", "c5"), warp_kind="implicit",
    )  # fmt: skip
    train(short_capture, out, settings, torch.device("cpu"), progress=False)
    resumed = train(
        short_capture,
        out,
        dataclasses.replace(settings, steps=6),
        torch.device("cpu"),
        resume=True,
        progress=False,
    )
    assert resumed.summary["steps"] == 6
    assert set(resumed.summary["pose_range_deg"]) == {"yaw", "pitch", "roll"}
    limits = resumed.summary["expression_limits"]
    assert set(limits) <= set(resumed.expression_names) and all(0 < w < 1 for w in limits.values())
    rest = resumed.summary["rest_expression"]
    assert set(rest) <= set(resumed.expression_names) and all(0.05 <= w <= 1 for w in rest.values())
    assert resumed.rest.expression == tuple(rest.get(n, 0.0) for n in resumed.expression_names)
    with pytest.raises(ValueError, match="other settings"):
        train(
            short_capture,
            out,
            dataclasses.replace(settings, steps=8, seed=2),
            torch.device("cpu"),
            resume=True,
            progress=False,
        )
    report_dir = tmp_path / "report"
    code = evaluate_module.main(
        [
            "--avatar",
            str(out),
            "--data",
            str(short_capture),
            "--out",
            str(report_dir),
            "--ablation",
            str(out),
            "--source",
            "pexels",
            "cap13",
        ]
    )
    assert code == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert {"avatar", "test_frames", "generator", "warp_distance", "ablation"} <= set(report)
    assert set(report["generator"]) == {"l1", "psnr", "ssim", "face_psnr", "regions"}
    regions = report["generator"]["regions"]
    assert set(regions) == {"face", "around", "below"}
    assert sum(r["pixels"] for r in regions.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(r["error"] for r in regions.values()) == pytest.approx(1.0, abs=1e-3)
    assert set(report["median_baseline"]) == {"l1", "psnr", "ssim", "face_psnr"}
    assert report["served_distances"] == [4, 5, 6, 7]
    own = report["served_warps"]
    assert own["moves"] == len(SERVED_MOVES) and 5.0 < own["psnr_from_generator"] < 100.0
    readback = report["readback"]  # the tiny untrained avatar's stills are no faces: no claims
    reenacted = readback["reenact"]
    assert readback["stills"] == 1 + 3 + 18 + 120 * len(reenacted) and readback["detected"] <= 1
    assert [r["source"] for r in reenacted] == readback["sources"] == ["pexels", "cap13"]
    assert all(r["frames"] == 120 and set(r["sent_sd"]) == set(r["corr"]) for r in reenacted)
    assert report["warp_distance"][0]["k"] == 1
    assert report["ablation"][0]["cache_layers"] == "C3+C4+C5" and "budget" in report["ablation"][0]
    # Trained avatars carry reference frames: every backend judged on held-out ones, in the report.
    backends = report["backends"]
    assert backends["gate"] == "held-out frames" and backends["label"]
    assert {(c["stage"], c["runtime"], c["precision"]) for c in backends["candidates"]} >= {
        ("generator", "torch", "fp32"), ("warp", "onnxruntime", "int8")
    }  # fmt: skip
    assert "## Backends" in (report_dir / "report.md").read_text()
    for name in (
        "strip.png",
        "warp_distance.png",
        "controls.png",
        "expression_limits.png",
        "served_warps.png",
        "report.md",
        "validation.png",
        "reenact.png",
    ):
        assert (report_dir / name).stat().st_size > 0, name
    split = interleaved_split(load_capture(short_capture).time_s, gap=2)
    assert report["test_frames"] == len(split.test) and report["split"] == split.digest()
    # A read-back clip that is not there is refused before anything is evaluated or written.
    refused = tmp_path / "refused"
    argv = ["--avatar", str(out), "--data", str(short_capture), "--out", str(refused)]
    assert evaluate_module.main([*argv, "--source", str(tmp_path / "no.mp4")]) == 2
    assert not refused.exists()
    # The candidates' table and strip score validation frames alike.
    table, picture = tmp_path / "compare.json", tmp_path / "compare.png"
    argv = [str(out), str(out), "--data", str(short_capture), "--json", str(table), "--warp-k", "1"]
    turns, served = tmp_path / "turns.png", tmp_path / "served.png"
    extra = [
        "--frames",
        "4",
        "--strip",
        str(picture),
        "--turns",
        str(turns),
        "--served",
        str(served),
    ]
    assert compare_module.main([*argv, *extra]) == 0
    rows = json.loads(table.read_text())
    assert len(rows) == 2 and rows[0] == rows[1] and rows[0]["steps"] == 6
    assert rows[0]["val_frames"] <= 4 and rows[0]["detail_ratio"] > 0
    # Where the warp falls behind the generator: the whole frame, and each region.
    regions = [f"warp_k1_{r}_below_generator_db" for r in ("face", "below", "around")]
    assert all(isinstance(rows[0][key], float) for key in regions)
    res = resumed.resolution
    assert Image.open(picture).size == (compare_module.STRIP_FRAMES * res, 3 * res)
    found, asked = map(int, rows[0]["turns_found"].split("/"))
    assert asked == len(compare_module.TURN_YAWS) and 0 <= found <= asked
    assert (rows[0]["turn_error_deg"] is None) == (found == 0)
    assert Image.open(turns).size == (len(compare_module.TURN_YAWS) * res, 2 * res)
    # The warps over served moves, against the same avatar's generator frames: two rows each.
    assert 5.0 < rows[0]["served_warp_psnr"] < 100.0
    assert Image.open(served).size == (len(SERVED_MOVES) * res, 2 * 2 * res)


def test_same_seed_same_avatar(short_capture: Path, tmp_path: Path) -> None:
    settings = TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=3,
        cache_layers=("c3",), warp_kind="explicit",
    )  # fmt: skip
    cpu = torch.device("cpu")
    a = train(short_capture, tmp_path / "a.pt", settings, cpu, progress=False).state_dict()
    b = train(short_capture, tmp_path / "b.pt", settings, cpu, progress=False).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)


def test_evaluation_streams_in_batches_and_pools_like_torchmetrics(short_capture: Path) -> None:
    """Memory must not grow with the clip: every render and every target read is one batch, and
    the running sums give what torchmetrics gives over all frames at once."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    avatar, _ = _tiny_avatar(short_capture)
    avatar.eval()
    frames = CaptureFrames(load_capture(short_capture), avatar.head, 64, preload=False)
    assert frames.images is None  # nothing of the clip is held
    asked: list[int] = []
    read = frames.targets

    def counted(
        rows: torch.Tensor,
        affine: torch.Tensor | None = None,
        mirrored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        asked.append(len(rows))
        return read(rows, affine, mirrored)

    frames.targets = counted  # type: ignore[method-assign]
    rows = np.arange(30)
    got = evaluate_module.score(frames, rows, 0, evaluate_module.generator_renderer(avatar, frames))
    assert max(asked) <= evaluate_module.BATCH and sum(asked) == len(rows)
    with torch.inference_mode():
        x = frames.inputs(torch.as_tensor(rows))
        pred = avatar.generate(x)[0].image.clamp(0, 1)
    target = read(torch.as_tensor(rows))
    assert got["psnr"] == pytest.approx(
        float(peak_signal_noise_ratio(pred, target, data_range=1.0)), abs=2e-3
    )
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0)
    assert isinstance(ssim, torch.Tensor)
    assert got["ssim"] == pytest.approx(float(ssim), abs=2e-4)
    assert got["l1"] == pytest.approx(float((pred - target).abs().mean()), abs=1e-5)
    face = x.mask[:, None].expand_as(pred)
    face_mse = float((pred - target).square()[face].mean())
    assert got["face_psnr"] == pytest.approx(-10 * np.log10(face_mse), abs=2e-3)


def test_the_shipped_avatar_loads_and_renders() -> None:
    """The file `make run` serves: learned from the talking clip, within its size budget, and its
    jaw opens the mouth (the picture changes where the mouth is, not only the outline)."""
    from engine.render.avatar import DEFAULT_AVATAR

    assert DEFAULT_AVATAR.stat().st_size <= 25 * 1024 * 1024
    avatar = Avatar.load(DEFAULT_AVATAR).prepare_for_inference()
    assert avatar.resolution == 256 and avatar.source is not None
    assert avatar.source["clip"] == "franck.mp4" and "FGNet" in str(avatar.source["licence"])
    assert avatar.summary["split"]["method"] == "interleaved"
    names = avatar.expression_names
    rest = avatar.render(avatar.rest).astype(np.int16)
    jaw = avatar.render(update(avatar.rest, names, {"jawOpen": 1.0})).astype(np.int16)
    assert rest.shape == (256, 256, 3) and rest.std() > 20  # a picture, not a flat colour
    mouth = (slice(150, 230), slice(88, 168))  # lower middle of the crop
    assert np.abs(jaw[mouth] - rest[mouth]).mean() > 10


def test_training_continues_from_a_finished_avatar_file(
    short_capture: Path, tmp_path: Path
) -> None:
    settings = TrainSettings(
        preset="tiny", steps=3, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3",), warp_kind="implicit",
    )  # fmt: skip
    cpu = torch.device("cpu")
    first = tmp_path / "first.pt"
    train(short_capture, first, settings, cpu, progress=False)
    more = dataclasses.replace(settings, steps=5)
    second = train(short_capture, tmp_path / "second.pt", more, cpu, progress=False, init=first)
    assert second.summary["steps"] == 5 and len(second.summary["history"]) == 2
    assert [s["steps"] for s in second.summary["stages"]] == [3, 5]
    # A new loss may fine-tune a finished avatar; the summary says which steps used which.
    sharper = dataclasses.replace(settings, steps=6, adversarial=0.05)
    third = train(
        short_capture, tmp_path / "3.pt", sharper, cpu, progress=False, init=tmp_path / "second.pt"
    )
    stages = third.summary["stages"]
    assert [(s["steps"], s["adversarial"]) for s in stages] == [(3, 0.0), (5, 0.0), (6, 0.05)]
    with pytest.raises(ValueError, match=r"other settings: \['seed'\]"):
        train(
            short_capture, tmp_path / "x.pt", dataclasses.replace(more, seed=2), cpu,
            progress=False, init=first,
        )  # fmt: skip
    with pytest.raises(ValueError, match="give one"):
        train(short_capture, first, more, cpu, progress=False, init=first, resume=True)


def test_framing_turned_on_over_a_finished_avatar(short_capture: Path, tmp_path: Path) -> None:
    settings = TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3",), warp_kind="implicit", generator_controls=8,
    )  # fmt: skip
    cpu = torch.device("cpu")
    first = train(short_capture, tmp_path / "first.pt", settings, cpu, progress=False)
    framed = dataclasses.replace(settings, steps=2, framing=True)
    # Turned on with no step taken, the avatar renders exactly what it rendered before.
    same = train(short_capture, tmp_path / "same.pt", framed, cpu, progress=False,
                 init=tmp_path / "first.pt")  # fmt: skip
    assert same.config.generator_framing == 3 and set(same.summary["framing"]) == {
        "centre",
        "spread",
    }
    capture = load_capture(short_capture)
    frames = evaluate_module.capture_frames(same.eval(), capture)
    assert frames.framing is not None and frames.framing.shape == (len(frames), 3)
    rows = torch.tensor([0, 3])
    with torch.inference_mode():
        before = first.eval().generate(frames.at_median().inputs(rows))[0].image
        after = same.generate(frames.inputs(rows))[0].image
    assert torch.equal(before, after)
    trained = train(
        short_capture, tmp_path / "framed.pt", dataclasses.replace(framed, steps=6, lr=1e-2),
        cpu, progress=False, init=tmp_path / "same.pt",
    )  # fmt: skip
    frames = evaluate_module.capture_frames(trained.eval(), capture)
    with torch.inference_mode():
        framed_image = trained.generate(frames.inputs(rows))[0].image
        served = trained.generate(frames.at_median().inputs(rows))[0].image
    assert not torch.equal(framed_image, served)  # it learned to read where the crop sat
    # Served frames carry no framing: the median's picture, whatever the backend.
    live = trained.inputs([trained.rest])
    assert live.framing is None
    # A framed avatar cannot go back to being continued without it.
    with pytest.raises(ValueError, match=r"other settings: \['framing'\]"):
        train(short_capture, tmp_path / "x.pt", dataclasses.replace(settings, steps=8), cpu,
              progress=False, init=tmp_path / "framed.pt")  # fmt: skip
    split = evaluate_module.split_of(trained, capture.time_s)
    report = evaluate_module.evaluate(trained.prepare_for_inference(), frames, split)
    assert {"psnr", "face_psnr"} <= set(report["generator_median_framing"])


def test_the_learning_rate_anneals_over_the_budget_by_a_half_cosine() -> None:
    assert lr_factor(0.0, 0.1) == 1.0 and lr_factor(1.0, 0.1) == pytest.approx(0.1)
    assert lr_factor(0.5, 0.1) == pytest.approx(0.55)
    curve = [lr_factor(p / 20, 0.1) for p in range(21)]
    assert all(a > b for a, b in itertools.pairwise(curve))
    assert lr_factor(2.0, 0.1) == pytest.approx(0.1) and lr_factor(-1.0, 0.1) == 1.0  # held
    assert {lr_factor(p / 4, 1.0) for p in range(5)} == {1.0}  # 1: constant
