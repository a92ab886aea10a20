"""The body's pose below the head (engine/training/body.py): four strip shares read against the
plain background, normalised on training frames, mirrored with the picture, and turned on over a
finished avatar without changing what it draws."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.capture.store import load_capture
from engine.render.avatar import Avatar, served_framing_matrix
from engine.training import train as train_module
from engine.training.body import (
    BODY_DIM,
    Body,
    body_shares,
    fit_served,
    key_colour,
    mirror_body,
    strip_shares,
)
from engine.training.evaluate import capture_frames
from engine.training.framing import FRAMING_DIM, MIRROR_MARK
from engine.training.mirror import flip_images, mirror_framing
from tests.conftest import assert_draws_as_before, continued_with

BLUE = (40, 120, 250)
GREY = (90, 90, 100)
R = 64


def crops(lefts: list[int], rights: list[int]) -> torch.Tensor:
    """(B, 3, R, R) uint8: a blue background with a grey shoulder rising `left` rows into the
    crop's left quarter and `right` rows into its right quarter."""
    out = torch.empty(len(lefts), 3, R, R, dtype=torch.uint8)
    out[:] = torch.tensor(BLUE, dtype=torch.uint8).view(1, 3, 1, 1)
    grey = torch.tensor(GREY, dtype=torch.uint8).view(3, 1, 1)
    for i, (left, right) in enumerate(zip(lefts, rights, strict=True)):
        out[i, :, R - left :, : R // 4] = grey
        out[i, :, R - right :, 3 * R // 4 :] = grey
    return out


def test_a_rising_shoulder_fills_its_strips() -> None:
    key = (BLUE[0] / 255, BLUE[1] / 255, BLUE[2] / 255)
    shares = strip_shares(crops([0, 16, 32], [32, 16, 0]), key)
    assert shares.shape == (3, BODY_DIM)
    # The bottom half is 32 rows: a shoulder 16 rows up fills half of both strips on its side.
    np.testing.assert_allclose(shares[:, :2].numpy(), np.array([[0, 0], [0.5, 0.5], [1, 1]]))
    np.testing.assert_allclose(shares[:, 2:].numpy(), np.array([[1, 1], [0.5, 0.5], [0, 0]]))
    # Seen in a mirror the strips read in reverse order.
    flipped = flip_images(crops([8], [24]).float(), torch.tensor([True])).to(torch.uint8)
    assert torch.equal(strip_shares(flipped, key), strip_shares(crops([8], [24]), key).flip(-1))


def test_the_body_is_fitted_on_training_rows_only() -> None:
    images = crops([0, 8, 16, 24, 32, 32], [0, 8, 16, 24, 32, 32])
    images[5, 0] = 255  # a held-out frame of another colour altogether: must not move the key

    def read(rows: torch.Tensor) -> torch.Tensor:
        return images[rows]

    train = np.arange(5)
    assert key_colour(read, train) == pytest.approx(tuple(c / 255 for c in BLUE))
    body, shares = Body.fit(read, len(images), train)
    assert shares.shape == (6, BODY_DIM)
    numbers = body.normalise(shares)
    assert numbers.dtype == np.float32 and np.allclose(numbers[2], 0.0)  # the median body
    assert np.all(numbers[4] > 0) and np.all(numbers[0] < 0)
    # Left and right share one normalisation: the mirror of the numbers is the numbers of the
    # mirrored picture.
    lopsided = strip_shares(crops([4], [28]), body.key).numpy()
    mirrored = strip_shares(crops([28], [4]), body.key).numpy()
    np.testing.assert_allclose(
        mirror_body(torch.from_numpy(body.normalise(lopsided))).numpy(), body.normalise(mirrored)
    )
    assert Body.from_dict(body.to_dict()) == body
    np.testing.assert_allclose(body_shares(read, len(images), body.key), shares)
    with pytest.raises(ValueError, match="no training rows"):
        Body.fit(read, len(images), np.array([], dtype=int))


@pytest.mark.parametrize(
    "bad",
    [None, {}, {"key": [0.1, 0.2], "centre": [0, 0], "spread": [1, 1]},
     {"key": [0, 0, 1], "centre": [0, 0], "spread": [1, 0]}, {"key": "blue"}],
)  # fmt: skip
def test_a_malformed_body_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="body"):
        Body.from_dict(bad)


def test_the_served_body_follows_the_pose() -> None:
    gen = np.random.default_rng(0)
    angles = gen.normal(size=(400, 5))
    truth = np.array([[1.0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0], [0, 0, -1.0, 0, 0], [0, 0, 0, 0, 0.5]])
    numbers = angles @ truth.T + [0.5, 0.0, -0.5, 1.0]
    weights, bias = fit_served(angles, numbers, np.arange(300))
    np.testing.assert_allclose(weights, truth, atol=0.02)
    np.testing.assert_allclose(bias, [0.5, 0.0, -0.5, 1.0], atol=0.02)
    body = Body((0.0, 0.0, 1.0), (0.1, 0.5), (0.1, 0.2), weights, bias)
    assert Body.from_dict(body.to_dict()) == body
    # In the generator: the body's rows of the framing from the control vector's angles.
    matrix = served_framing_matrix(body.to_dict()["served"], width=8, control_dim=57)
    controls = torch.zeros(1, 57)
    controls[0, -5:] = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0])
    framing = controls @ matrix[:, :-1].T + matrix[:, -1]
    np.testing.assert_allclose(framing[0, :4].numpy(), 0.0)
    np.testing.assert_allclose(framing[0, 4:].numpy(), [1.5, 0.0, -0.5, 2.0], atol=0.05)
    with pytest.raises(ValueError, match="served"):
        served_framing_matrix({"weights": [[1.0] * 5], "bias": [0.0, 1.0]}, 8, 57)
    with pytest.raises(ValueError, match="served"):
        Body.from_dict(body.to_dict() | {"served": {"weights": [[1.0]], "bias": [0.0]}})


def test_body_numbers_of_the_wrong_shape_are_refused() -> None:
    body = Body(key=(0.0, 0.0, 1.0), centre=(0.1, 0.5), spread=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        body.normalise(np.zeros((3, 3)))


def test_mirroring_the_framing_mirrors_the_body() -> None:
    # centre x, centre y, log side, the mirror mark, then the body's four numbers
    framing = torch.tensor([[0.5, -1.0, 0.25, 0.0, 1.0, 2.0, 3.0, 4.0]])
    flipped = mirror_framing(framing, body=True)
    assert flipped.tolist() == [[-0.5, -1.0, 0.25, 1.0, 4.0, 3.0, 2.0, 1.0]]
    # Without the mark, the body follows the framing directly.
    unmarked = mirror_framing(torch.tensor([[0.5, -1.0, 0.25, 1.0, 2.0, 3.0, 4.0]]), body=True)
    assert unmarked.tolist() == [[-0.5, -1.0, 0.25, 4.0, 3.0, 2.0, 1.0]]


def test_the_body_is_turned_on_over_a_finished_avatar(short_capture: Path, tmp_path: Path) -> None:
    settings = train_module.TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3",), warp_kind="implicit", generator_controls=8, framing=True,
        mirror=0.5, mirror_mark=True,
    )  # fmt: skip
    cpu = torch.device("cpu")
    first, same = continued_with(short_capture, tmp_path, settings, body=True, steps=2)
    width = FRAMING_DIM + 1 + BODY_DIM
    assert same.config.generator_framing == width
    assert Body.from_dict(same.summary["body"]).spread[0] > 0
    capture = load_capture(short_capture)
    frames = capture_frames(same.eval(), capture)
    assert frames.framing is not None and frames.framing.shape == (len(frames), width)
    assert torch.all(frames.framing[:, MIRROR_MARK] == 0)
    # The body's weights start at zero: the avatar draws what it drew before.
    rows = torch.tensor([0, 3])
    assert_draws_as_before(first, same, capture, rows)
    # A mirrored pair's body is its strips in reverse order.
    x = frames.inputs(rows, mirrored=torch.tensor([True, False]))
    assert x.framing is not None
    assert torch.equal(x.framing[0, -BODY_DIM:], frames.framing[0, -BODY_DIM:].flip(-1))
    assert torch.equal(x.framing[1], frames.framing[3])
    # Served, with no crop: the body its pose predicts, the rest of the framing 0.
    loaded = Avatar.load(tmp_path / "same.pt")
    served = Body.from_dict(loaded.summary["body"])
    assert served.served_weights is not None and served.served_bias is not None
    assert loaded.generator.served_framing is not None
    plain_rows = capture_frames(loaded, capture).at_median().inputs(rows)
    explicit = torch.zeros(2, width)
    angles = plain_rows.controls[:, -5:]
    explicit[:, -BODY_DIM:] = angles @ torch.tensor(served.served_weights).T + torch.tensor(
        served.served_bias
    )
    with torch.inference_mode():
        by_controls = loaded.generate(plain_rows)[0].image
        by_hand = loaded.generate(dataclasses.replace(plain_rows, framing=explicit))[0].image
    torch.testing.assert_close(by_controls, by_hand)
    with pytest.raises(ValueError, match=r"other settings: \['body'\]"):
        train_module.train(
            short_capture, tmp_path / "x.pt", dataclasses.replace(settings, steps=4), cpu,
            progress=False, init=tmp_path / "same.pt",
        )  # fmt: skip


def test_the_body_needs_the_framing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_module.main(["--data", "x", "--out", "y", "--body"])
    assert "--body needs --framing" in capsys.readouterr().err
