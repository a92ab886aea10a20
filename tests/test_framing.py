"""Framing: where each crop sat in its source frame, normalised on training rows only."""

from __future__ import annotations

import numpy as np
import pytest

from engine.training.framing import FRAMING_DIM, MIRROR_MARK, Framing, framing_features


def test_features_are_centre_and_log_side() -> None:
    boxes = np.array([[10.0, 20.0, 100.0], [0.0, 0.0, 50.0]])
    got = framing_features(boxes)
    assert got[0] == pytest.approx([60.0, 70.0, np.log(100.0)])
    assert got[1] == pytest.approx([25.0, 25.0, np.log(50.0)])
    with pytest.raises(ValueError, match="x0, y0, side"):
        framing_features(np.array([[0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="x0, y0, side"):
        framing_features(np.zeros((3, 4)))


def test_fit_uses_only_the_rows_it_is_given_and_the_median_reads_zero() -> None:
    rng = np.random.default_rng(0)
    boxes = np.column_stack(
        (rng.normal(100, 5, 200), rng.normal(50, 3, 200), rng.normal(190, 4, 200))
    )
    boxes[150:] += 80.0  # held-out rows far away: fitting on them would move the centre
    train = np.arange(150)
    framing = Framing.fit(boxes, train)
    features = framing.normalise(boxes)
    assert features.dtype == np.float32 and features.shape == (200, 3)
    assert np.median(features[train], axis=0) == pytest.approx([0, 0, 0], abs=1e-6)
    # A robust spread: the training rows come out near unit standard deviation.
    assert features[train].std(axis=0) == pytest.approx([1, 1, 1], abs=0.2)
    assert features[150:, 0].mean() > 10  # the far rows read far, not clipped
    assert Framing.from_dict(framing.to_dict()) == framing


def test_a_crop_that_never_moves_and_bad_records() -> None:
    still = Framing.fit(np.tile([[5.0, 5.0, 100.0]], (10, 1)), np.arange(10))
    assert np.all(np.isfinite(still.normalise(np.array([[6.0, 5.0, 100.0]]))))
    with pytest.raises(ValueError, match="no training rows"):
        Framing.fit(np.ones((4, 3)), np.array([], dtype=int))
    for bad in (None, {"centre": [0, 0]}, {"centre": [0, 0, 0], "spread": [1, 0, 1]}):
        with pytest.raises(ValueError, match="framing"):
            Framing.from_dict(bad)


def test_the_mirror_mark_is_appended_as_zero() -> None:
    boxes = np.array([[10.0, 20.0, 100.0], [14.0, 18.0, 110.0], [8.0, 22.0, 90.0]])
    framing = Framing.fit(boxes, np.arange(3))
    marked = framing.normalise(boxes, FRAMING_DIM + 1)
    assert marked.shape == (3, FRAMING_DIM + 1) and np.all(marked[:, MIRROR_MARK] == 0)
    assert np.array_equal(marked[:, :FRAMING_DIM], framing.normalise(boxes))
    with pytest.raises(ValueError, match="framing has 3 or 4 numbers"):
        framing.normalise(boxes, 5)
