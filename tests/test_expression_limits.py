"""Expression limits (engine/controls.py, Avatar.expression_limits): fitted from training weights
with a margin (mirror images sharing theirs), served weights held there after the response, and a
file with malformed limits refused at load."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.controls import expression_limits, hold_expression, neutral, update
from engine.render.avatar import Avatar
from engine.render.response import Curve, Response
from engine.training.mirror import name_partners
from tests.conftest import save_untrained_avatar

NAMES = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "cheekPuff")


def test_limits_are_the_top_percentile_plus_a_margin_and_full_ranges_are_left_out() -> None:
    rng = np.random.default_rng(0)
    weights = np.zeros((2000, 4))
    weights[:, 0] = rng.uniform(0.0, 0.4, 2000)  # jaw never past 0.4
    weights[0, 0] = 1.0  # one glitched frame is not a trained wide mouth
    weights[:, 1] = rng.uniform(0.0, 0.3, 2000)  # the left blink barely moves...
    weights[:, 2] = rng.uniform(0.0, 0.8, 2000)  # ...the right one closes
    weights[:, 3] = rng.uniform(0.0, 0.95, 2000)  # puffs reach the top with the margin
    limits = expression_limits(weights, NAMES)
    assert limits == {"jawOpen": 0.5, "eyeBlinkLeft": 0.4, "eyeBlinkRight": 0.9}
    # Trained in a mirror too, each side is held where the wider of the two is.
    mirrored = expression_limits(weights, NAMES, name_partners(NAMES))
    assert mirrored["eyeBlinkLeft"] == mirrored["eyeBlinkRight"] == 0.9
    with pytest.raises(ValueError, match="weights"):
        expression_limits(weights[:, :3], NAMES)


def test_holding_clamps_only_the_named_weights() -> None:
    controls = update(neutral(NAMES), NAMES, {"jawOpen": 0.9, "eyeBlinkLeft": 0.2}, {"yaw": 7})
    held = hold_expression(controls, NAMES, {"jawOpen": 0.5, "eyeBlinkLeft": 0.4})
    assert held.expression == (0.5, 0.2, 0.0, 0.0) and held.yaw == 7.0
    assert hold_expression(controls, NAMES, {}) is controls


def test_served_weights_are_held_after_the_response_and_bad_limits_are_refused(
    tmp_path: Path,
) -> None:
    blink = Curve("blink", score=(0.0, 0.5), weight=(0.0, 1.0))
    summary = {"expression_limits": {"jawOpen": 0.5, "eyeBlinkLeft": 0.8}}
    plain = Avatar.load(save_untrained_avatar(tmp_path / "plain.pt"))
    held = Avatar.load(
        save_untrained_avatar(
            tmp_path / "held.pt", summary=summary | {"response": Response((blink,)).to_dict()}
        )
    )
    names = plain.expression_names
    sent = update(plain.rest, names, {"jawOpen": 1.0, "eyeBlinkLeft": 0.45, "eyeBlinkRight": 0.3})
    # Blink 0.45 is drawn at 0.9 by the response, then held at 0.8; the right one is not held.
    drawn = update(plain.rest, names, {"jawOpen": 0.5, "eyeBlinkLeft": 0.8, "eyeBlinkRight": 0.6})
    assert torch.equal(held.inputs([sent]).controls, plain.inputs([drawn]).controls)
    assert held.expression_limits == summary["expression_limits"]
    # The drawing alone (what the pipeline's dispatcher keeps without the model) draws the same.
    drawing = pickle.loads(pickle.dumps(held.drawing()))
    assert drawing(sent) == drawn and plain.drawing()(sent) == sent
    for bad, why in (
        ({"notAName": 0.5}, "notAName"),
        ({"jawOpen": 0.0}, r"jawOpen.*not in"),
        ({"jawOpen": "wide"}, r"jawOpen.*not in"),
        ([0.5], "must be"),
    ):
        path = save_untrained_avatar(tmp_path / "bad.pt", summary={"expression_limits": bad})
        with pytest.raises(ValueError, match=rf"damaged avatar file.*{why}"):
            Avatar.load(path)
