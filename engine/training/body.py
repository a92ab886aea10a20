"""The body's pose below the head, read from each crop: what the face controls cannot say.

The crop follows the head (engine/capture/crop.py), and the shoulders move on their own: the man
of the talking clip leans, shrugs and turns his torso while his head stays in the crop. On
held-out frames seven tenths of the generator's squared error lay in the frame's bottom quarter
(`engine evaluate`'s `regions`), at 19 dB there against 26 on the training frames: nothing it was
given said where the shoulders were, so it painted their average, a blurred grey band. Given the
crop's framing alone, the nearest training frames predict a held-out frame's bottom band at
22.9 dB; given the four numbers below, at 28.9 (64^2 band, mean of 8 neighbours).

The four numbers are a simple shoulder tracker for a capture in front of a plain background: in
each of the four outer column strips of the crop (an eighth of its width each, two a side), the
share of the bottom half that is not background, where background is a pixel within
KEY_DISTANCE of the key colour, the median of the crops' top corners over training frames. A
shoulder that rises fills more of its strips. The left and right strips share one normalisation
(median and robust spread over both sides of the training frames), so that a mirrored pair's body
is the same numbers in reverse order (engine/training/mirror.py).

Like the framing (engine/training/framing.py), the numbers join the generator's control embedding
through zero-initialised weights. A served frame has no crop to read them from: it gets the body
its head pose predicts, a ridge fit of the four numbers to the five angles of the control vector
over the (filmed) training frames, which the generator evaluates from the controls it is given
(engine/render/avatar.py `served_framing_matrix`): one body, drawn sharp, that leans and shrugs
with the head as the man's did, rather than the average of every pose he took. The angles alone,
not the expression: a smile should not move the shoulders. In front of a busy background the
numbers measure clutter rather than shoulders; the generator then learns to ignore them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from engine.render.frame_inputs import NUM_ANGLES as SERVED_ANGLES

BODY_DIM = 4  # outer-left, inner-left, inner-right, outer-right strip
STRIPS = 8  # the crop's width in strips; the body numbers read the two outermost a side
STRIP_INDEX = (0, 1, STRIPS - 2, STRIPS - 1)
KEY_DISTANCE = 0.2  # RGB distance in [0, 1] units from the key colour still called background
CORNER_SHARE = 16  # the top corners' patches are a 16th of the crop's side
KEY_FRAMES = 256  # training crops the key colour is taken from
CHUNK = 64  # crops read at a time when the frames are not in memory
MAD_TO_SD = 1.4826
MIN_SPREAD = 1e-2  # a body that never moves: its numbers stay near 0, not infinite
SERVED_RIDGE = 1.0  # ridge weight of the served body's fit to the angles (normalised numbers)

ReadCrops = Callable[[torch.Tensor], torch.Tensor]  # rows (B,) -> (B, 3, R, R) uint8


def key_colour(read: ReadCrops, rows: np.ndarray) -> tuple[float, float, float]:
    """The background's colour in [0, 1]: the median of the top corners' patches of up to
    KEY_FRAMES crops at `rows` (training frames only)."""
    rows = np.asarray(rows)
    if len(rows) == 0:
        raise ValueError("no training rows to take the background's colour from")
    picks = np.unique(rows[np.linspace(0, len(rows) - 1, KEY_FRAMES).round().astype(int)])
    pixels = []
    for i in range(0, len(picks), CHUNK):
        crops = read(torch.as_tensor(picks[i : i + CHUNK])).float() / 255.0  # (B, 3, R, R)
        p = max(1, crops.shape[-1] // CORNER_SHARE)
        for patch in (crops[..., :p, :p], crops[..., :p, -p:]):
            pixels.append(patch.permute(1, 0, 2, 3).reshape(3, -1))
    median = torch.cat(pixels, dim=1).median(dim=1).values
    return (float(median[0]), float(median[1]), float(median[2]))


def strip_shares(crops: torch.Tensor, key: tuple[float, float, float]) -> torch.Tensor:
    """(B, 3, R, R) uint8 crops -> (B, BODY_DIM) share of each outer strip's bottom half that is
    not background."""
    images = crops.float() / 255.0
    r = images.shape[-1]
    bottom = images[..., r // 2 :, :]  # (B, 3, R/2, R)
    distance = (bottom - torch.tensor(key).view(1, 3, 1, 1)).square().sum(1).sqrt()
    foreground = (distance > KEY_DISTANCE).float()  # (B, R/2, R)
    edges = np.linspace(0, r, STRIPS + 1).round().astype(int)
    return torch.stack(
        [foreground[..., edges[s] : edges[s + 1]].mean(dim=(1, 2)) for s in STRIP_INDEX], dim=1
    )


def body_shares(read: ReadCrops, count: int, key: tuple[float, float, float]) -> np.ndarray:
    """(count, BODY_DIM) strip shares of every crop, read CHUNK at a time."""
    out = [
        strip_shares(read(torch.arange(i, min(i + CHUNK, count))), key)
        for i in range(0, count, CHUNK)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, BODY_DIM), np.float32)


def fit_served(
    angles: np.ndarray, numbers: np.ndarray, rows: np.ndarray
) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]:
    """Ridge fit of the normalised body numbers (N, BODY_DIM) to the control vector's angles
    (N, 5: degrees / ANGLE_SCALE_DEG) over `rows`: weights (BODY_DIM, 5) and bias (BODY_DIM,).
    (Any (N, F) inputs fit alike: bench/served_body.py fits the whole control vector too.)"""
    x = np.asarray(angles, dtype=np.float64)[np.asarray(rows)]
    y = np.asarray(numbers, dtype=np.float64)[np.asarray(rows)]
    xa = np.concatenate((x, np.ones((len(x), 1))), axis=1)
    coef = np.linalg.solve(xa.T @ xa + SERVED_RIDGE * np.eye(xa.shape[1]), xa.T @ y)  # (6, K)
    weights = tuple(tuple(float(v) for v in row) for row in coef[:-1].T)
    return weights, tuple(float(v) for v in coef[-1])


@dataclass(frozen=True)
class Body:
    """Fitted on training frames: the key colour (3,), and per strip distance from the edge
    (outer, inner) the centre (2,) and spread (2,) its shares are normalised by; and, when fitted
    with the angles, the served body's fit to them: weights (BODY_DIM, 5) and bias (BODY_DIM,)."""

    key: tuple[float, float, float]
    centre: tuple[float, float]
    spread: tuple[float, float]
    served_weights: tuple[tuple[float, ...], ...] | None = None
    served_bias: tuple[float, ...] | None = None

    @staticmethod
    def fit(
        read: ReadCrops, count: int, rows: np.ndarray, angles: np.ndarray | None = None
    ) -> tuple[Body, np.ndarray]:
        """The body's normalisation from the crops at `rows`, and the shares of all `count`
        crops (B, BODY_DIM) under its key; with `angles` (count, 5, the control vector's), the
        served body's fit to them too."""
        key = key_colour(read, rows)
        shares = body_shares(read, count, key)
        train = shares[np.asarray(rows)]
        # Pooled over both sides: (outer-left, outer-right), (inner-left, inner-right).
        pooled = [
            np.concatenate((train[:, 0], train[:, 3])),
            np.concatenate((train[:, 1], train[:, 2])),
        ]
        centre = [float(np.median(v)) for v in pooled]
        spread = [
            max(MIN_SPREAD, float(MAD_TO_SD * np.median(np.abs(v - c))))
            for v, c in zip(pooled, centre, strict=True)
        ]
        body = Body(key=key, centre=(centre[0], centre[1]), spread=(spread[0], spread[1]))
        if angles is not None:
            weights, bias = fit_served(angles, body.normalise(shares), rows)
            body = replace(body, served_weights=weights, served_bias=bias)
        return body, shares

    def normalise(self, shares: np.ndarray) -> np.ndarray:
        """(N, BODY_DIM) strip shares -> (N, BODY_DIM) float32, 0 at the training median."""
        shares = np.asarray(shares, dtype=np.float64)
        if shares.ndim != 2 or shares.shape[1] != BODY_DIM:
            raise ValueError(f"body shares must be (N, {BODY_DIM}), got {shares.shape}")
        c, s = self.centre, self.spread
        centre = np.array([c[0], c[1], c[1], c[0]])
        spread = np.array([s[0], s[1], s[1], s[0]])
        return ((shares - centre) / spread).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": list(self.key),
            "centre": list(self.centre),
            "spread": list(self.spread),
        }
        if self.served_weights is not None and self.served_bias is not None:
            out["served"] = {
                "weights": [list(row) for row in self.served_weights],
                "bias": list(self.served_bias),
            }
        return out

    @staticmethod
    def from_dict(d: Any) -> Body:
        """Inverse of `to_dict`; anything else is a clear error."""
        try:
            key = tuple(float(v) for v in d["key"])
            centre = tuple(float(v) for v in d["centre"])
            spread = tuple(float(v) for v in d["spread"])
            served = d.get("served")
            weights = (
                None
                if served is None
                else tuple(tuple(float(v) for v in row) for row in served["weights"])
            )
            bias = None if served is None else tuple(float(v) for v in served["bias"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"body must be {{'key': [3], 'centre': [2], 'spread': [2]}}: {exc}"
            ) from exc
        if len(key) != 3 or len(centre) != 2 or len(spread) != 2 or min(spread) <= 0:
            raise ValueError(f"body needs 3 key values, 2 centres and 2 positive spreads: {d!r}")
        if (
            weights is not None
            and bias is not None
            and (
                len(bias) != BODY_DIM or [len(row) for row in weights] != [SERVED_ANGLES] * BODY_DIM
            )
        ):
            raise ValueError(
                f"body's served fit needs ({BODY_DIM}, {SERVED_ANGLES}) weights and {BODY_DIM} "
                f"biases: {served!r}"
            )
        return Body(
            key=(key[0], key[1], key[2]),
            centre=(centre[0], centre[1]),
            spread=(spread[0], spread[1]),
            served_weights=weights,
            served_bias=bias,
        )


def mirror_body(body: torch.Tensor) -> torch.Tensor:
    """(B, BODY_DIM) normalised body numbers -> those of the picture seen in a mirror: the
    strips in reverse order (their normalisation is shared by both sides)."""
    return body.flip(-1)
