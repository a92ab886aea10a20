"""Controls: what drives the avatar, validated, then turned into head-model inputs.

The first step of the data flow (control -> mesh -> UV map -> ...). A control names expression
weights by the avatar's expression names, a head pose in degrees and a camera orbit (novel view) in
degrees. Anything out of range, unknown or not a finite number is refused with a ValueError that
names it, and nothing of a refused update is applied (updates are all-or-nothing).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch3d.transforms import matrix_to_euler_angles
from scipy.spatial.transform import Rotation

from engine.head.model import EULER_CONVENTION, HeadControls, HeadModel

EXPRESSION_RANGE = (0.0, 1.0)  # ARKit-style weights
ANGLE_SCALE_DEG = 45.0  # pose and view angles are divided by this in the networks' control vector
POSE_LIMITS_DEG = {"yaw": (-45.0, 45.0), "pitch": (-30.0, 30.0), "roll": (-30.0, 30.0)}
VIEW_LIMITS_DEG = {"yaw": (-60.0, 60.0), "pitch": (-30.0, 30.0)}


@dataclass(frozen=True)
class Controls:
    """One frame's controls. expression: E weights in the avatar's expression order; yaw, pitch,
    roll: head pose in degrees (engine.head.model.pose_rotation's signs); view_yaw, view_pitch:
    camera orbit about the head centre in degrees."""

    expression: tuple[float, ...]
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    view_yaw: float = 0.0
    view_pitch: float = 0.0


def neutral(names: Sequence[str]) -> Controls:
    return Controls(expression=(0.0,) * len(names))


def change(a: Controls, b: Controls) -> float:
    """The largest change of one entry of the networks' control vector from `a` to `b`: an
    expression weight, or an angle in units of ANGLE_SCALE_DEG (how far a warp must reach)."""
    weights = max((abs(x - y) for x, y in zip(a.expression, b.expression, strict=True)), default=0)
    angles = max(
        abs(a.yaw - b.yaw),
        abs(a.pitch - b.pitch),
        abs(a.roll - b.roll),
        abs(a.view_yaw - b.view_yaw),
        abs(a.view_pitch - b.view_pitch),
    )
    return max(float(weights), angles / ANGLE_SCALE_DEG)


def as_message(controls: Controls, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Controls -> the fields of a control message that set exactly this state (the inverse of
    `update` from any state)."""
    return {
        "expression": dict(zip(names, controls.expression, strict=True)),
        "pose": {"yaw": controls.yaw, "pitch": controls.pitch, "roll": controls.roll},
        "view": {"yaw": controls.view_yaw, "pitch": controls.view_pitch},
    }


def short_repr(value: object, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters: an error message must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def to_float(value: int | float) -> float:
    """float(value), and inf for an int beyond float range (JSON allows any number of digits)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _number(field: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number, got {type(value).__name__}")
    x = to_float(value)
    if not math.isfinite(x):
        raise ValueError(f"{field} must be finite, got {short_repr(value)}")
    if not lo <= x <= hi:
        raise ValueError(f"{field} must be within [{lo:g}, {hi:g}], got {x:g}")
    return x


def _angles(
    field: str, values: object, limits: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{field} must be an object with {', '.join(limits)}")
    unknown = sorted(set(values) - set(limits))
    if unknown:
        raise ValueError(
            f"{field} has unknown keys {short_repr(unknown)}: expected {', '.join(limits)}"
        )
    return {k: _number(f"{field}.{k}", v, *limits[k]) for k, v in values.items()}


def update(
    base: Controls,
    names: Sequence[str],
    expression: object = None,
    pose: object = None,
    view: object = None,
) -> Controls:
    """Merge a partial update into `base`: fields not given keep their value. Validates everything
    before applying anything, so a refused update leaves the state as it was."""
    weights = list(base.expression)
    if expression is not None:
        if not isinstance(expression, Mapping):
            raise ValueError("expression must be an object mapping expression names to weights")
        index = {n: i for i, n in enumerate(names)}
        checked = {}
        for name, value in expression.items():
            if name not in index:
                raise ValueError(
                    f"unknown expression {short_repr(name)}: this avatar has {len(names)} names"
                )
            checked[index[name]] = _number(f"expression.{name}", value, *EXPRESSION_RANGE)
        for i, w in checked.items():
            weights[i] = w
    pose_values = _angles("pose", pose, POSE_LIMITS_DEG) if pose is not None else {}
    view_values = _angles("view", view, VIEW_LIMITS_DEG) if view is not None else {}
    return dataclasses.replace(
        base,
        expression=tuple(weights),
        **pose_values,
        **{f"view_{k}": v for k, v in view_values.items()},
    )


def to_head_controls(
    batch: Sequence[Controls], head: HeadModel, translation: torch.Tensor
) -> tuple[HeadControls, torch.Tensor]:
    """B controls -> head-model inputs and (B, 3, 3) view (orbit) rotations.

    translation (3,): where the head sits in the world (an avatar keeps the median of its capture)."""
    dev = head.v_template.device
    expr = torch.tensor([c.expression for c in batch], dtype=torch.float32, device=dev)  # (B, E)
    if expr.shape[1] != head.num_expressions:
        raise ValueError(
            f"controls carry {expr.shape[1]} expressions, the head has {head.num_expressions}"
        )
    b = len(batch)
    # Head pose and view orbit in one conversion, by scipy from the floats: pose_rotation's ~25
    # small torch operations cost ~0.2 ms of every served frame, this one call a tenth of that.
    # The same "YXZ" convention (tests/test_controls checks the two agree).
    rows = [(c.yaw, c.pitch, c.roll) for c in batch] + [
        (c.view_yaw, c.view_pitch, 0.0) for c in batch
    ]
    matrices = Rotation.from_euler(EULER_CONVENTION, rows, degrees=True).as_matrix()  # (2B, 3, 3)
    both = torch.from_numpy(matrices.astype(np.float32)).to(dev)
    rotation, view = both[:b], both[b:]  # (B, 3, 3) each
    zeros3 = torch.zeros(len(batch), 3, device=dev)
    controls = HeadControls(
        expression=expr,
        rotation=rotation,
        translation=translation.to(dev, torch.float32).expand(len(batch), 3).clone(),
        jaw=zeros3,
        neck=zeros3.clone(),
    )
    return controls, view


def pose_degrees(rotation: np.ndarray) -> np.ndarray:
    """(N, 3, 3) head rotations -> (N, 3) yaw, pitch, roll in degrees (inverse of pose_rotation)."""
    angles = matrix_to_euler_angles(
        torch.as_tensor(rotation, dtype=torch.float64), EULER_CONVENTION
    )
    return np.degrees(angles.numpy())


POSE_MARGIN_DEG = 5.0  # how far past the poses it was trained on an avatar is still asked to go
# The share (percent) of training poses left out at each end before the margin: a handful of
# frames turned far is not enough to learn a pose from. On the talking clip the controls strip
# cracked at yaw -15 and pitch +10, both offered by the extremes plus 5 degrees (training yaw: 1st
# percentile -6.6, extreme -9.4; pitch: 99th 2.1, extreme 5.9).
POSE_COVERAGE_PERCENT = 1.0


def pose_range(
    rotation: np.ndarray,
    margin_deg: float = POSE_MARGIN_DEG,
    outliers_percent: float = POSE_COVERAGE_PERCENT,
) -> dict[str, list[float]]:
    """(N, 3, 3) head rotations of the frames an avatar learned from -> {"yaw", "pitch", "roll":
    [lo, hi]} degrees: the range their `outliers_percent`-th to (100 - it)-th percentiles cover
    (0: the extremes), widened by `margin_deg` and rounded out to whole degrees (so that a slider
    in 1-degree steps still reaches 0), within POSE_LIMITS_DEG. Beyond it the networks have seen
    too few of the UV maps they would get (they crack and smear)."""
    angles = pose_degrees(rotation)  # (N, 3)
    out = {}
    for i, key in enumerate(("yaw", "pitch", "roll")):
        lo_limit, hi_limit = POSE_LIMITS_DEG[key]
        low, high = np.percentile(angles[:, i], [outliers_percent, 100.0 - outliers_percent])
        # Rounded to 1e-3 first: a pose read back from its rotation is off by ~1e-6 degrees.
        lo = max(lo_limit, math.floor(round(float(low) - margin_deg, 3)))
        hi = min(hi_limit, math.ceil(round(float(high) + margin_deg, 3)))
        out[key] = [float(lo), float(hi)]
    return out


# Median weights below this are the tracker's noise: the rest keeps them at 0.
REST_MIN_WEIGHT = 0.05


def rest_expression(weights: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """(N, E) expression weights of the frames an avatar learned from -> its resting expression:
    the median weight of each name, to 0.01, names below REST_MIN_WEIGHT left out. A clip that
    smiles throughout never showed the all-zero neutral face, so that is not where it looks best."""
    median = np.median(np.asarray(weights, dtype=np.float64), axis=0)  # (E,)
    return {
        name: round(float(w), 2)
        for name, w in zip(names, median, strict=True)
        if w >= REST_MIN_WEIGHT
    }


# How far past the widest expressions it was trained on an avatar is still asked to go, in weight,
# and the share (percent) of its training frames left out at the top first (a tracker's glitch).
# On the talking clip the mouth is clean up to jawOpen 0.5 (its limit: 0.52), gains a dark rim at
# 0.6 and smears from 0.7; eyeWide, mouthFunnel, mouthFrown and mouthStretch, which the clip
# barely shows (limits 0.12-0.16), break into blue patches from 0.5-0.75 (`engine evaluate`'s
# expression_limits.png draws these sweeps).
EXPRESSION_MARGIN = 0.1
EXPRESSION_COVERAGE_PERCENT = 0.1


def expression_limits(
    weights: np.ndarray,
    names: Sequence[str],
    partners: np.ndarray | None = None,
    margin: float = EXPRESSION_MARGIN,
    outliers_percent: float = EXPRESSION_COVERAGE_PERCENT,
) -> dict[str, float]:
    """(N, E) expression weights of the frames an avatar learned from -> {name: the largest weight
    it is drawn at}: the (100 - outliers_percent)-th percentile plus `margin`, rounded up to 0.01;
    names whose limit reaches EXPRESSION_RANGE's top are left out (not held). `partners` (E,):
    each name's mirror image, for an avatar trained on mirrored frames too (a name is then held
    where the wider of the two is). Past the limit the mesh opens further than any picture the
    networks learned from, and the mouth comes apart."""
    w = np.asarray(weights, dtype=np.float64)  # (N, E)
    if w.ndim != 2 or w.shape[1] != len(names) or w.shape[0] == 0:
        raise ValueError(f"expected ({len(names)},)-wide weights of some frames, got {w.shape}")
    top = np.percentile(w, 100.0 - outliers_percent, axis=0)  # (E,)
    if partners is not None:
        top = np.maximum(top, top[partners])
    hi = EXPRESSION_RANGE[1]
    out = {}
    for name, value in zip(names, top, strict=True):
        limit = math.ceil(round((float(value) + margin) * 100.0, 6)) / 100.0
        if limit < hi:
            out[name] = limit
    return out


def hold_expression(
    controls: Controls, names: Sequence[str], limits: Mapping[str, float]
) -> Controls:
    """Controls whose expression weights stay at or below `limits` ({name: weight}, names left
    out unheld)."""
    if not limits:
        return controls
    held = tuple(
        min(w, limits[name]) if name in limits else w
        for name, w in zip(names, controls.expression, strict=True)
    )
    return (
        controls if held == controls.expression else dataclasses.replace(controls, expression=held)
    )


def clamp_pose(controls: Controls, limits: Mapping[str, Sequence[float]]) -> Controls:
    """Controls with yaw, pitch, roll held within `limits` ({"yaw": [lo, hi], ...})."""
    changes = {}
    for key in ("yaw", "pitch", "roll"):
        if key in limits:
            lo, hi = limits[key]
            changes[key] = min(max(getattr(controls, key), lo), hi)
    return dataclasses.replace(controls, **changes)


# A held orbit is found to 1/ORBIT_STEPS^2 of its length (0.23 degrees of a 60-degree orbit).
ORBIT_STEPS = 16


def hold_in_range(controls: Controls, limits: Mapping[str, Sequence[float]]) -> Controls:
    """Controls whose head, as the camera sees it, stays within `limits` ({"yaw": [lo, hi], ...}):
    the pose is clamped (`clamp_pose`), then the view orbit is shortened along its own direction
    until the head turned by pose and orbit together is inside. The avatar learned from one camera,
    so an orbit is the same picture as a head turn, and past the trained turns it comes apart."""
    held = clamp_pose(controls, limits)
    if held.view_yaw == 0.0 and held.view_pitch == 0.0:
        return held
    # The orbit turns the posed head again (orbit_vertices), so the seen pose is euler(V @ R);
    # yaw and pitch do not simply add (a pitched orbit of a turned head also rolls it). scipy's
    # rotations here, not torch's: this runs per frame on one pose, where scipy costs a fifth.
    # Its intrinsic "YXZ" is pose_rotation's convention (tests/test_controls checks the two agree).
    head = Rotation.from_euler("YXZ", [held.yaw, held.pitch, held.roll], degrees=True)
    if _inside(
        Rotation.from_euler("YXZ", [held.view_yaw, held.view_pitch, 0.0], degrees=True) * head,
        limits,
    )[0]:
        return held
    lo_t, hi_t = 0.0, 1.0  # fractions of the orbit: lo_t inside (the clamped pose), hi_t not
    for _ in range(2):
        t = np.linspace(lo_t, hi_t, ORBIT_STEPS + 1)  # (S,)
        orbit = np.stack([t * held.view_yaw, t * held.view_pitch, np.zeros_like(t)], axis=1)
        inside = _inside(Rotation.from_euler("YXZ", orbit, degrees=True) * head, limits)  # (S,)
        first_out = int(np.argmin(inside))
        if first_out == 0:  # only if the limits leave no room for the clamped pose itself
            return _orbit_scaled(held, 0.0)
        lo_t, hi_t = float(t[first_out - 1]), float(t[first_out])
    return _orbit_scaled(held, lo_t)


def _inside(seen: Rotation, limits: Mapping[str, Sequence[float]]) -> np.ndarray:
    """(S,) whether each head rotation's yaw, pitch, roll are within `limits` (to 1e-6 degrees)."""
    angles = np.atleast_2d(seen.as_euler("YXZ", degrees=True))  # (S, 3)
    inside = np.ones(len(angles), dtype=bool)
    for i, key in enumerate(("yaw", "pitch", "roll")):
        if key in limits:
            lo, hi = limits[key]
            inside &= (angles[:, i] >= lo - 1e-6) & (angles[:, i] <= hi + 1e-6)
    return inside


def _orbit_scaled(controls: Controls, fraction: float) -> Controls:
    return dataclasses.replace(
        controls, view_yaw=controls.view_yaw * fraction, view_pitch=controls.view_pitch * fraction
    )


def view_range(limits: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """The orbits worth offering for pose `limits`: those that keep the unturned head in range
    (`hold_in_range` shortens the rest), within VIEW_LIMITS_DEG."""
    out = {}
    for key, (lo_limit, hi_limit) in VIEW_LIMITS_DEG.items():
        lo, hi = limits.get(key, (lo_limit, hi_limit))
        out[key] = [max(lo_limit, min(0.0, float(lo))), min(hi_limit, max(0.0, float(hi)))]
    return out


def expressions_from_scores(
    scores: np.ndarray, score_names: Sequence[str], names: Sequence[str]
) -> np.ndarray:
    """(N, K) captured scores over score_names -> (N, E) weights over the head's names; names the
    tracker does not score (tongueOut) are zero, scores the head does not know (_neutral) dropped."""
    out = np.zeros((scores.shape[0], len(names)), dtype=np.float32)
    for k, name in enumerate(names):
        if name in score_names:
            out[:, k] = np.clip(scores[:, list(score_names).index(name)], *EXPRESSION_RANGE)
    return out


def head_controls_from_capture(
    scores: np.ndarray,
    score_names: Sequence[str],
    rotation: np.ndarray,
    translation: np.ndarray,
    head: HeadModel,
) -> HeadControls:
    """A capture's per-frame (N) scores and head pose -> the head-model inputs that reproduce it,
    so that training UV maps come from controls alone, as they will at run time."""
    dev = head.v_template.device
    expr = expressions_from_scores(scores, score_names, head.expression_names)
    n = expr.shape[0]
    zeros3 = torch.zeros(n, 3, device=dev)
    return HeadControls(
        expression=torch.as_tensor(expr, device=dev),
        rotation=torch.as_tensor(rotation, dtype=torch.float32, device=dev),
        translation=torch.as_tensor(translation, dtype=torch.float32, device=dev),
        jaw=zeros3,
        neck=zeros3.clone(),
    )
