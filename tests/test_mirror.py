"""Mirrored training frames (engine/training/mirror.py): the flipped picture, the same mesh
flipped with it, and the controls of a head turned the other way."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.camera import Camera
from engine.capture.store import load_capture
from engine.controls import pose_degrees
from engine.head.canonical_mesh import load_canonical_mesh
from engine.head.default import build_default_head
from engine.head.model import HeadModel, pose_rotation
from engine.render.avatar import Avatar
from engine.render.frame_inputs import random_affines, warp_image
from engine.render.networks import PRESETS
from engine.training import train as train_module
from engine.training.dataset import CaptureFrames
from engine.training.evaluate import capture_frames
from engine.training.framing import FRAMING_DIM, MIRROR_MARK
from engine.training.mirror import (
    flip_affine,
    flip_images,
    mirror_framing,
    mirror_points,
    mirror_rotation,
    name_partners,
    then,
    vertex_partners,
)
from engine.training.split import interleaved_split
from tests.conftest import assert_draws_as_before, continued_with


def test_names_pair_left_with_right() -> None:
    names = ("eyeBlinkLeft", "jawOpen", "eyeBlinkRight", "mouthLeft", "mouthRight")
    assert name_partners(names).tolist() == [2, 1, 0, 4, 3]
    with pytest.raises(ValueError, match="eyeBlinkRight"):
        name_partners(("eyeBlinkLeft", "jawOpen"))


def test_the_canonical_mesh_pairs_every_vertex() -> None:
    verts = load_canonical_mesh().vertices
    pairs = vertex_partners(verts)
    assert np.array_equal(pairs[pairs], np.arange(len(verts)))  # a partner's partner is itself
    np.testing.assert_allclose(verts[pairs] * [-1, 1, 1], verts, atol=1e-5)
    lopsided = verts.copy()
    lopsided[lopsided[:, 0] > 1, 0] += 2.0  # one half pushed out: no longer a mirror image
    with pytest.raises(ValueError, match="not left-right symmetric"):
        vertex_partners(lopsided)


def test_affines_compose_in_order() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = random_affines(2, 64, 5.0, 0.1, gen)
    point = torch.tensor([10.0, 20.0, 1.0])
    step = b @ torch.cat((a @ point, torch.ones(1)))
    torch.testing.assert_close(then(a, b) @ point, step)
    flip = flip_affine(64)
    assert (flip @ point).tolist() == [54.0, 20.0]


def test_a_mirrored_head_turns_the_other_way_seen_from_the_camera() -> None:
    # An off-centre principal point, as a crop's: the flip mirrors the picture's centre column.
    camera = Camera(fx=1.2, fy=1.2, cx=0.375, cy=0.4)
    angles = torch.tensor([[12.0, -5.0, 4.0], [-3.0, 7.0, -9.0]])
    rotation = pose_rotation(angles[:, 0], angles[:, 1], angles[:, 2])
    mirrored = mirror_rotation(rotation, camera)
    torch.testing.assert_close(torch.linalg.det(mirrored), torch.ones(2))
    torch.testing.assert_close(mirror_rotation(mirrored, camera), rotation, atol=1e-5, rtol=0)
    # The centre column's ray is the mirror's axis: a head on it facing the camera stays so.
    ray = torch.tensor([(0.5 - 0.375) / 1.2, 0.0, -1.0])  # world: the camera looks down -z
    point = 30.0 * ray
    torch.testing.assert_close(mirror_points(point, camera), point)
    # Seen along the ray, yaw and roll change sign, pitch stays (the picture is flipped).
    turn = math.degrees(math.atan2(-ray[0], -ray[2]))  # the yaw that faces the camera from it
    seen = pose_degrees(rotation.double().numpy())
    seen_mirrored = pose_degrees(mirrored.double().numpy())
    np.testing.assert_allclose(seen_mirrored[:, 0] - turn, -(seen[:, 0] - turn), atol=0.6)
    np.testing.assert_allclose(seen_mirrored[:, 1], seen[:, 1], atol=0.6)
    framing = torch.tensor([[0.5, -1.0, 0.25]])
    assert mirror_framing(framing).tolist() == [[-0.5, -1.0, 0.25]]


def test_mirrored_frames_match_their_flipped_pictures(short_capture: Path) -> None:
    data = load_capture(short_capture)
    head = HeadModel(build_default_head())
    frames = CaptureFrames(data, head, 64)
    rows = torch.tensor([0, 5, 10, 20])
    every = torch.ones(4, dtype=torch.bool)
    plain = frames.inputs(rows)
    mirrored = frames.inputs(rows, mirrored=every)
    # The mesh covers the flipped picture's face exactly, with the other side's texture places.
    assert torch.equal(mirrored.mask, plain.mask.flip(-1))
    u_plain, u_mirrored = plain.uv[..., 0].flip(-1), mirrored.uv[..., 0]
    both = mirrored.mask
    assert float((u_plain[both] - 0.5).mul(u_mirrored[both] - 0.5).mean()) < 0  # other side
    names = head.expression_names
    left, right = names.index("eyeBlinkLeft"), names.index("eyeBlinkRight")
    e = len(names)
    torch.testing.assert_close(mirrored.controls[:, left], plain.controls[:, right])
    # Yaw and roll turn the other way about the picture's centre line, pitch stays.
    torch.testing.assert_close(
        mirrored.controls[:, e + 1], plain.controls[:, e + 1], atol=0.02, rtol=0
    )
    torch.testing.assert_close(mirrored.view_dir[:, 0], -plain.view_dir[:, 0], atol=0.02, rtol=0)
    assert mirrored.mirrored is not None and bool(mirrored.mirrored.all())
    # Mixed batches mirror only the rows asked, with the augmentation's affine after the flip.
    some = torch.tensor([True, False, True, False])
    affine = random_affines(4, 64, 4.0, 0.05, torch.Generator().manual_seed(1))
    mixed = frames.inputs(rows, affine, mirrored=some)
    assert torch.equal(mixed.mask[1], frames.inputs(rows, affine).mask[1])
    flipped_then_moved = warp_image(plain.mask.flip(-1)[:, None].float(), affine)[:, 0] > 0.5
    agree = (mixed.mask[0] == flipped_then_moved[0]).float().mean()
    assert agree > 0.97
    targets = frames.targets(rows, affine, some)
    torch.testing.assert_close(
        targets[0], warp_image(frames.targets(rows[:1]).flip(-1), affine[:1])[0]
    )
    torch.testing.assert_close(targets[1], frames.targets(rows[1:2], affine[1:2])[0])
    assert torch.equal(flip_images(targets, torch.zeros(4, dtype=torch.bool)), targets)


def test_the_background_flips_for_mirrored_frames() -> None:
    avatar = Avatar(PRESETS["tiny"], build_default_head(), Camera(fx=2.0, fy=2.0), torch.zeros(3))
    with torch.no_grad():
        avatar.background.copy_(
            torch.linspace(0, 1, avatar.resolution).expand_as(avatar.background)
        )
    r = avatar.resolution
    rgb, alpha = torch.zeros(2, 3, r, r), torch.zeros(2, 1, r, r)
    out = avatar.composite(rgb, alpha, torch.tensor([False, True])).image
    torch.testing.assert_close(out[0], avatar.background[0])
    torch.testing.assert_close(out[1], avatar.background[0].flip(-1))


def test_mirroring_widens_the_offered_poses(short_capture: Path, tmp_path: Path) -> None:
    settings = train_module.TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3", "c4", "c5"), warp_kind="implicit", mirror=0.5,
    )  # fmt: skip
    avatar = train_module.train(
        short_capture, tmp_path / "m.pt", settings, torch.device("cpu"), progress=False
    )
    data = load_capture(short_capture)
    rows = interleaved_split(data.time_s, gap=2).train
    centres = CaptureFrames(data, avatar.head, 64, preload=False).head_centres(rows).numpy()
    offered = avatar.pose_range_deg
    assert avatar.summary["pose_frame"] == "viewer" and avatar.summary["settings"]["mirror"] == 0.5
    mirrored = train_module.trained_pose_range(data.rotation[rows], centres, data.camera, True)
    plain = train_module.trained_pose_range(data.rotation[rows], centres, data.camera, False)
    assert offered == mirrored
    for key in ("yaw", "roll"):
        assert offered[key][0] <= plain[key][0] and offered[key][1] >= plain[key][1]
    # Seen from the camera, a mirrored clip turns as far each way: the range is near symmetric.
    assert abs(offered["yaw"][0] + offered["yaw"][1]) <= 2.0


def test_mirror_refuses_a_share_outside_zero_to_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_module.main(["--data", "x", "--out", "y", "--mirror", "1.5"])
    assert "--mirror must be in [0, 1]" in capsys.readouterr().err


def test_the_mirror_mark_tells_mirrored_pairs_apart(short_capture: Path, tmp_path: Path) -> None:
    settings = train_module.TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3",), warp_kind="implicit", generator_controls=8, framing=True,
        mirror=0.5,
    )  # fmt: skip
    cpu = torch.device("cpu")
    # Turned on over an avatar trained without it: the mark's weights start at zero, so the
    # frames as filmed (mark 0) render exactly as before.
    first, same = continued_with(short_capture, tmp_path, settings, mirror_mark=True, steps=2)
    assert same.config.generator_framing == FRAMING_DIM + 1
    capture = load_capture(short_capture)
    frames = capture_frames(same.eval(), capture)
    assert frames.framing is not None and frames.framing.shape == (len(frames), FRAMING_DIM + 1)
    assert torch.all(frames.framing[:, MIRROR_MARK] == 0)
    rows = torch.tensor([0, 3])
    assert_draws_as_before(first, same, capture, rows)
    # Mirrored pairs carry the mark and the negated centre; the others are untouched.
    mirrored = torch.tensor([True, False])
    x = frames.inputs(rows, mirrored=mirrored)
    assert x.framing is not None
    assert x.framing[:, MIRROR_MARK].tolist() == [1.0, 0.0]
    assert x.framing[0, 0] == -frames.framing[0, 0] and torch.equal(x.framing[1], frames.framing[3])
    # A marked avatar cannot be continued without the mark.
    with pytest.raises(ValueError, match=r"other settings: \['mirror_mark'\]"):
        train_module.train(short_capture, tmp_path / "x.pt", dataclasses.replace(settings, steps=4),
                           cpu, progress=False, init=tmp_path / "same.pt")  # fmt: skip


def test_the_mirror_mark_needs_framing_and_mirroring(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--mirror", "0.5"], ["--framing"]):
        with pytest.raises(SystemExit):
            train_module.main(["--data", "x", "--out", "y", "--mirror-mark", *extra])
        assert "--mirror-mark needs --framing and --mirror" in capsys.readouterr().err
    # Continuing a marked avatar without mirroring is allowed: every pair is marked as filmed.
    with contextlib.suppress(SystemExit):
        train_module.main(["--data", "x", "--out", "y", "--mirror-mark", "--framing",
                           "--init", "z.pt", "--warp-only"])  # fmt: skip
    assert "--mirror-mark needs" not in capsys.readouterr().err


def test_the_offered_range_is_the_generators_whatever_the_warp_alone_saw() -> None:
    # A warp-only run sees no mirror (the warp fitted to the clip as filmed); the generator it
    # leaves frozen learned from mirrored pairs, so the avatar still offers the mirrored range.
    plain = train_module.TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3",), warp_kind="implicit", mirror=0.0,
    )  # fmt: skip
    warp_alone = dataclasses.replace(plain, warp_only=True, min_k=4)
    mirrored_stage = {"mirror": 0.5, "warp_only": False}
    assert train_module.generator_mirrored([mirrored_stage], warp_alone)
    assert train_module.generator_mirrored([], dataclasses.replace(plain, mirror=0.5))
    assert not train_module.generator_mirrored([], plain)
    # Stages older than mirroring record none; a mirrored warp-only stage never mirrored the
    # generator.
    assert not train_module.generator_mirrored(
        [{"mirror": None}, {"mirror": 0.5, "warp_only": True}], warp_alone
    )
