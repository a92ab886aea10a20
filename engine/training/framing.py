"""Where each crop sat in its source frame: what tells the generator about the body below the head.

The crop follows the head (engine/capture/crop.py), so the head stays put in it while the body
does not: when the man of the talking clip drops or leans his head, his shoulders rise into the
bottom of the crop. Nothing in the controls says so, and that is where most of the generator's
error on held-out frames lies (`engine evaluate`'s `regions`: the frame's bottom quarter).

The features are the crop's centre and side in the source frame, (x0 + side / 2, y0 + side / 2,
log side), centred on the median of the training frames and divided by their spread (a robust
standard deviation), fitted on training rows only. A served frame has no source frame: it sits at
the median, framing 0, which the generator reads as nothing at all (engine/render/networks).

An avatar trained on mirrored pairs (engine/training/mirror.py) may read one number more, the
mirror mark: 1 for a pair seen in a mirror, 0 for one as filmed. Without it the flipped bodies and
the filmed ones share the same framings (a flipped crop's centre x is negated about the median), and
at the median, where frames are served, the generator paints their average: a blurred body. With it
the served frame (mark 0) asks for the body as filmed, while the heads of both halves still train
the same networks.

Where the shoulders are is not where the crop sat (he leans and shrugs under a still head): the
body's own numbers (engine/training/body.py) follow the framing's in the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FRAMING_DIM = 3  # centre x, centre y, log side
MIRROR_MARK = (
    FRAMING_DIM  # index of the mirror mark, after the features, where a generator reads it
)
MAD_TO_SD = 1.4826  # a normal distribution's standard deviation over its median absolute deviation
MIN_SPREAD = 1e-3  # a clip whose crop never moves: its features stay near 0, not infinite


def framing_features(crop_boxes: np.ndarray) -> np.ndarray:
    """(N, 3) crop boxes (x0, y0, side in source pixels) -> (N, 3) centre x, centre y, log side."""
    boxes = np.asarray(crop_boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 3 or np.any(boxes[:, 2] <= 0):
        raise ValueError(f"crop boxes must be (N, 3) x0, y0, side > 0, got {boxes.shape}")
    side = boxes[:, 2]
    return np.stack((boxes[:, 0] + side / 2, boxes[:, 1] + side / 2, np.log(side)), axis=1)


@dataclass(frozen=True)
class Framing:
    """The normalisation fitted on training frames: centre (3,) and spread (3,)."""

    centre: tuple[float, float, float]
    spread: tuple[float, float, float]

    @staticmethod
    def fit(crop_boxes: np.ndarray, rows: np.ndarray) -> Framing:
        """Median and robust spread of the features of `rows` (training frames only)."""
        features = framing_features(crop_boxes)[np.asarray(rows)]
        if len(features) == 0:
            raise ValueError("no training rows to fit the framing on")
        centre = np.median(features, axis=0)
        spread = MAD_TO_SD * np.median(np.abs(features - centre), axis=0)
        spread = np.maximum(spread, MIN_SPREAD)
        return Framing(
            centre=(float(centre[0]), float(centre[1]), float(centre[2])),
            spread=(float(spread[0]), float(spread[1]), float(spread[2])),
        )

    def normalise(self, crop_boxes: np.ndarray, dim: int = FRAMING_DIM) -> np.ndarray:
        """(N, 3) crop boxes -> (N, dim) float32 features, 0 at the training median; `dim`
        FRAMING_DIM + 1 appends the mirror mark, 0: every frame as filmed."""
        if dim not in (FRAMING_DIM, FRAMING_DIM + 1):
            raise ValueError(f"framing has {FRAMING_DIM} or {FRAMING_DIM + 1} numbers, not {dim}")
        features = framing_features(crop_boxes)
        out = (features - np.asarray(self.centre)) / np.asarray(self.spread)
        out = np.pad(out, ((0, 0), (0, dim - FRAMING_DIM)))
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"centre": list(self.centre), "spread": list(self.spread)}

    @staticmethod
    def from_dict(d: Any) -> Framing:
        """Inverse of `to_dict`; anything else is a clear error."""
        try:
            centre = tuple(float(v) for v in d["centre"])
            spread = tuple(float(v) for v in d["spread"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"framing must be {{'centre': [3], 'spread': [3]}}: {exc}") from exc
        if len(centre) != FRAMING_DIM or len(spread) != FRAMING_DIM or min(spread) <= 0:
            raise ValueError(f"framing needs 3 centres and 3 positive spreads, got {d!r}")
        return Framing(
            centre=(centre[0], centre[1], centre[2]), spread=(spread[0], spread[1], spread[2])
        )
