"""Controls: validation names the problem, updates are all-or-nothing, conversions round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.controls import (
    POSE_LIMITS_DEG,
    VIEW_LIMITS_DEG,
    Controls,
    clamp_pose,
    expressions_from_scores,
    head_controls_from_capture,
    hold_in_range,
    neutral,
    pose_degrees,
    pose_range,
    rest_expression,
    to_head_controls,
    update,
    view_range,
)
from engine.head.default import ARKIT_NAMES, build_default_head
from engine.head.model import HeadModel, pose_rotation

NAMES = ARKIT_NAMES


def test_partial_updates_keep_other_fields() -> None:
    c = update(neutral(NAMES), NAMES, expression={"jawOpen": 0.5}, pose={"yaw": 10})
    c = update(c, NAMES, expression={"mouthSmileLeft": 1}, view={"pitch": -5})
    assert c.expression[NAMES.index("jawOpen")] == 0.5
    assert c.expression[NAMES.index("mouthSmileLeft")] == 1.0
    assert (c.yaw, c.pitch, c.view_pitch) == (10.0, 0.0, -5.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expression": {"jawOpen": 1.5}}, r"expression.jawOpen must be within \[0, 1\]"),
        ({"expression": {"jawOpen": math.nan}}, "expression.jawOpen must be finite"),
        ({"expression": {"jawOpen": "wide"}}, "expression.jawOpen must be a number"),
        ({"expression": {"jawOpen": True}}, "expression.jawOpen must be a number"),
        ({"expression": {"grin": 0.2}}, "unknown expression 'grin'"),
        ({"expression": [0.1]}, "expression must be an object"),
        ({"pose": {"yaw": 200}}, r"pose.yaw must be within \[-45, 45\]"),
        ({"pose": {"tilt": 1}}, "pose has unknown keys"),
        ({"view": {"yaw": math.inf}}, "view.yaw must be finite"),
        ({"view": 3}, "view must be an object"),
    ],
)
def test_bad_values_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        update(neutral(NAMES), NAMES, **kwargs)


def test_refused_update_changes_nothing() -> None:
    base = update(neutral(NAMES), NAMES, expression={"jawOpen": 0.25})
    with pytest.raises(ValueError):
        update(base, NAMES, expression={"jawOpen": 0.9, "eyeBlinkLeft": 7}, pose={"yaw": 5})
    assert base.expression[NAMES.index("jawOpen")] == 0.25 and base.yaw == 0.0


def test_pose_round_trip() -> None:
    yaw, pitch, roll = (
        torch.tensor([12.0, -30.0]),
        torch.tensor([-7.0, 20.0]),
        torch.tensor([3.0, -15.0]),
    )
    back = pose_degrees(pose_rotation(yaw, pitch, roll).numpy())
    np.testing.assert_allclose(back, np.stack([yaw, pitch, roll], axis=1), atol=1e-4)


def test_to_head_controls_batches_and_orbits() -> None:
    head = HeadModel(build_default_head())
    a = update(
        neutral(NAMES), NAMES, expression={"jawOpen": 1.0}, pose={"yaw": 20}, view={"yaw": 30}
    )
    controls, view = to_head_controls([a, neutral(NAMES)], head, torch.tensor([0.0, 0.0, -60.0]))
    assert controls.expression.shape == (2, len(NAMES)) and view.shape == (2, 3, 3)
    torch.testing.assert_close(controls.translation[1], torch.tensor([0.0, 0.0, -60.0]))
    torch.testing.assert_close(view[1], torch.eye(3))
    out = head(controls)
    assert (out.vertices[0] - out.vertices[1]).abs().max() > 1.0
    # The rotations are pose_rotation's, made from the floats in one call.
    turned = update(
        neutral(NAMES), NAMES, pose={"yaw": -33, "pitch": 12, "roll": 7}, view={"pitch": -9}
    )
    controls, view = to_head_controls([a, turned], head, torch.zeros(3))
    yaw, pitch, roll = (torch.tensor([20.0, -33.0]), torch.tensor([0.0, 12.0]), torch.tensor([0.0, 7.0]))  # fmt: skip
    torch.testing.assert_close(controls.rotation, pose_rotation(yaw, pitch, roll))
    orbit = pose_rotation(torch.tensor([30.0, 0.0]), torch.tensor([0.0, -9.0]), torch.zeros(2))
    torch.testing.assert_close(view, orbit)


def test_capture_scores_map_onto_head_names() -> None:
    score_names = ("_neutral", "jawOpen", "eyeBlinkLeft")
    scores = np.array([[0.9, 0.2, 1.2]], dtype=np.float32)
    expr = expressions_from_scores(scores, score_names, NAMES)
    assert expr.shape == (1, len(NAMES))
    assert expr[0, NAMES.index("jawOpen")] == pytest.approx(0.2)
    assert expr[0, NAMES.index("eyeBlinkLeft")] == 1.0  # clipped to the range
    assert expr[0, NAMES.index("tongueOut")] == 0.0
    head = HeadModel(build_default_head())
    rot = pose_rotation(torch.tensor([5.0]), torch.zeros(1), torch.zeros(1)).numpy()
    hc = head_controls_from_capture(scores, score_names, rot, np.array([[0.0, 0.0, -50.0]]), head)
    assert hc.expression.shape == (1, len(NAMES)) and hc.rotation.shape == (1, 3, 3)


def test_wrong_expression_count_is_named() -> None:
    head = HeadModel(build_default_head())
    with pytest.raises(ValueError, match="controls carry 2 expressions"):
        to_head_controls([Controls(expression=(0.0, 0.0))], head, torch.zeros(3))


def test_pose_range_covers_the_training_poses_with_a_margin_and_clamps() -> None:
    yaw = torch.tensor([-18.0, -5.0, 4.0])
    rotation = pose_rotation(yaw, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)).numpy()
    limits = pose_range(rotation, margin_deg=5.0, outliers_percent=0.0)
    assert limits["yaw"] == pytest.approx([-23.0, 9.0], abs=1e-3)
    assert limits["pitch"] == pytest.approx([-4.0, 8.0], abs=1e-3)
    wide = pose_range(pose_rotation(torch.tensor([-44.0]), torch.zeros(1), torch.zeros(1)).numpy())
    assert wide["yaw"][0] == POSE_LIMITS_DEG["yaw"][0]  # never past what the protocol allows
    c = clamp_pose(Controls(expression=(0.5,), yaw=30.0, pitch=-10.0, roll=2.0), limits)
    assert (c.yaw, c.pitch, c.roll) == pytest.approx((9.0, -4.0, 2.0), abs=1e-3)
    assert c.expression == (0.5,)


def test_a_few_far_turned_frames_do_not_widen_the_pose_range() -> None:
    yaw = torch.cat((torch.linspace(-5.0, 5.0, 1000), torch.tensor([-30.0, -31.0, -32.0])))
    rotation = pose_rotation(yaw, torch.zeros(1003), torch.zeros(1003)).numpy()
    assert pose_range(rotation)["yaw"] == [-10.0, 10.0]  # 1st..99th percentile, 5 degrees more
    assert pose_range(rotation, outliers_percent=0.0)["yaw"] == [-37.0, 10.0]


def _seen_pose(c: Controls) -> np.ndarray:
    """(3,) yaw, pitch, roll of the head as the camera sees it: pose, then orbit."""
    head = pose_rotation(
        *(torch.tensor([v], dtype=torch.float64) for v in (c.yaw, c.pitch, c.roll))
    )
    orbit = pose_rotation(
        *(torch.tensor([v], dtype=torch.float64) for v in (c.view_yaw, c.view_pitch, 0.0))
    )
    return pose_degrees((orbit @ head).numpy())[0]


def test_an_orbit_is_shortened_until_the_seen_head_is_in_range() -> None:
    limits = {"yaw": [-21.0, 10.0], "pitch": [-19.0, 12.0], "roll": [-11.0, 13.0]}
    rng = np.random.default_rng(0)
    for _ in range(200):
        asked = Controls(
            expression=(0.0,),
            yaw=float(rng.uniform(-45, 45)),
            pitch=float(rng.uniform(-30, 30)),
            roll=float(rng.uniform(-30, 30)),
            view_yaw=float(rng.uniform(-60, 60)),
            view_pitch=float(rng.uniform(-30, 30)),
        )
        held = hold_in_range(asked, limits)
        seen = _seen_pose(held)
        for i, key in enumerate(("yaw", "pitch", "roll")):
            assert limits[key][0] - 1e-6 <= seen[i] <= limits[key][1] + 1e-6, (asked, held, seen)
        # Shortened along its own direction, never lengthened or turned.
        assert abs(held.view_yaw) <= abs(asked.view_yaw) and abs(held.view_pitch) <= abs(
            asked.view_pitch
        )
        assert held.view_yaw * asked.view_pitch == pytest.approx(held.view_pitch * asked.view_yaw)
        clamped = clamp_pose(asked, limits)
        assert (held.yaw, held.pitch, held.roll) == (clamped.yaw, clamped.pitch, clamped.roll)
    inside = Controls(expression=(0.0,), yaw=-5.0, view_yaw=8.0, view_pitch=-3.0)
    assert hold_in_range(inside, limits) == inside
    # A pure yaw orbit of a head at yaw 4 keeps 6 degrees of the 10 it may turn right.
    turned = hold_in_range(Controls(expression=(0.0,), yaw=4.0, view_yaw=40.0), limits)
    assert turned.view_yaw == pytest.approx(6.0, abs=0.3) and _seen_pose(turned)[0] <= 10.0 + 1e-6


def test_view_range_offers_the_orbits_of_the_unturned_head() -> None:
    limits = {"yaw": [-21.0, 10.0], "pitch": [-19.0, 12.0], "roll": [-11.0, 13.0]}
    assert view_range(limits) == {"yaw": [-21.0, 10.0], "pitch": [-19.0, 12.0]}
    wide = {k: [-90.0, 90.0] for k in ("yaw", "pitch", "roll")}
    assert view_range(wide) == {k: list(v) for k, v in VIEW_LIMITS_DEG.items()}
    assert view_range({"yaw": [5.0, 9.0]})["yaw"] == [0.0, 9.0]  # the captured view stays offered


def test_rest_expression_is_the_training_median_without_tracker_noise() -> None:
    weights = np.array([[0.70, 0.01, 0.2], [0.66, 0.03, 0.4], [0.61, 0.02, 0.0]], dtype=np.float32)
    assert rest_expression(weights, ["smile", "noise", "blink"]) == {"smile": 0.66, "blink": 0.2}


def test_change_is_the_largest_move_of_one_control_entry() -> None:
    from engine.controls import ANGLE_SCALE_DEG, change

    names = ("jawOpen", "eyeBlinkLeft")
    rest = neutral(names)
    assert change(rest, rest) == 0.0
    moved = update(rest, names, expression={"jawOpen": 0.4, "eyeBlinkLeft": 0.1})
    assert change(rest, moved) == pytest.approx(0.4)
    turned = update(moved, names, pose={"yaw": 27.0}, view={"pitch": -9.0})
    assert change(moved, turned) == pytest.approx(27.0 / ANGLE_SCALE_DEG)
    assert change(turned, rest) == change(rest, turned)
