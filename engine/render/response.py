"""The expression response: what a sent score becomes before the avatar draws it.

A webcam page sends the scores its tracker (MediaPipe Face Landmarker) reads off the user's face;
the avatar was trained on the same tracker's scores of its own clip, so ideally the tracker would
read back off the avatar what was sent. It does not, evenly: measured on the 635-minute avatar, a
blink sent at 0.1 / 0.3 / 0.5 / 0.6 read back 0.08 / 0.14 / 0.30 / 0.51 (flat where a webcam user's
partial blinks and squints lie, steep above), because partial blinks are brief in the clip and the
generator draws them nearer open. So a channel (jawOpen, smile or blink; served: the blink alone,
`engine/training/response.py` says why) can have a measured curve: the weights 0..1 sent to the
avatar and the score read back off its stills at each (fitted on the avatar's own renders only,
by that module). A served score is mapped
through its inverse, so a score sent is the score seen, within the range the avatar can show:
below the channel's read-back at weight 0 it is drawn at 0, above its read-back at 1 at 1.

Served frames only (`Avatar.inputs`): training and evaluation on captured frames read the scores
as captured, which is what the networks learned from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.controls import Controls

# Read-back channel -> the expression names it averages (and the curve applies to each of).
CHANNELS: dict[str, tuple[str, ...]] = {
    "jawOpen": ("jawOpen",),
    "smile": ("mouthSmileLeft", "mouthSmileRight"),
    "blink": ("eyeBlinkLeft", "eyeBlinkRight"),
}
MIN_RISE = 1e-3  # a knot is kept only where the read-back rose this much over the last kept one


@dataclass(frozen=True)
class Curve:
    """One channel's response. score: the read-back at each knot, increasing; weight: the weight
    sent to the avatar that gave it, increasing. At least two knots."""

    channel: str
    score: tuple[float, ...]
    weight: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(
                f"response channel must be one of {sorted(CHANNELS)}: {self.channel!r}"
            )
        score, weight = np.asarray(self.score), np.asarray(self.weight)
        if score.shape != weight.shape or score.ndim != 1 or len(score) < 2:
            raise ValueError(f"response {self.channel}: score and weight need 2+ knots each")
        if not (np.all(np.diff(score) > 0) and np.all(np.diff(weight) > 0)):
            raise ValueError(f"response {self.channel}: score and weight must both increase")
        if not (np.all(np.isfinite(score)) and weight[0] >= 0.0 and weight[-1] <= 1.0):
            raise ValueError(f"response {self.channel}: weights must lie in [0, 1]")

    @staticmethod
    def measured(channel: str, weights: Sequence[float], scores: Sequence[float]) -> Curve:
        """The curve from weights sent (increasing) and the scores read back at them: the
        read-back made monotone (a running maximum: a tracker's wobble is not a response), and
        only knots where it rose by MIN_RISE kept, so that it can be inverted."""
        if len(weights) != len(scores) or len(weights) < 2:
            raise ValueError(f"response {channel}: need 2+ weights, each with its read-back")
        rising = np.maximum.accumulate(np.asarray(scores, dtype=np.float64))
        keep_score, keep_weight = [float(rising[0])], [float(weights[0])]
        for w, s in zip(weights[1:], rising[1:], strict=True):
            if s >= keep_score[-1] + MIN_RISE:
                keep_score.append(float(s))
                keep_weight.append(float(w))
        if len(keep_score) < 2:
            raise ValueError(f"response {channel}: the read-back does not rise with the weight")
        return Curve(channel, tuple(keep_score), tuple(keep_weight))

    def weight_for(self, scores: np.ndarray) -> np.ndarray:
        """Sent scores (any shape) -> the weights that make the avatar read back as them."""
        return np.interp(scores, self.score, self.weight)


@dataclass(frozen=True)
class Response:
    """Curves for some of the channels; a channel without one is passed through."""

    curves: tuple[Curve, ...]

    def apply(self, controls: Controls, names: Sequence[str]) -> Controls:
        """`controls` with each curve's expression weights mapped (names: the avatar's order)."""
        weights = np.asarray(controls.expression, dtype=np.float64)
        index = {n: i for i, n in enumerate(names)}
        for curve in self.curves:
            rows = [index[n] for n in CHANNELS[curve.channel] if n in index]
            weights[rows] = curve.weight_for(weights[rows])
        return replace(controls, expression=tuple(float(w) for w in weights))

    def to_dict(self) -> dict[str, Any]:
        return {c.channel: {"score": list(c.score), "weight": list(c.weight)} for c in self.curves}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Response:
        """Inverse of `to_dict`; a malformed entry fails naming its channel."""
        if not isinstance(d, Mapping):
            raise ValueError(f"response must be {{channel: {{score, weight}}}}, got {type(d)}")
        curves = []
        for channel, knots in d.items():
            try:
                score, weight = knots["score"], knots["weight"]
                curves.append(Curve(channel, tuple(map(float, score)), tuple(map(float, weight))))
            except (KeyError, TypeError) as exc:
                raise ValueError(f"response {channel}: needs score and weight lists") from exc
        return Response(tuple(curves))
