"""The one similarity solver every alignment uses (engine.head.procrustes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.head.procrustes import fit_similarity


def _moved(points: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(V, 3) points moved by 5 known similarities: (N, V, 3), rotations, scales, translations."""
    rng = np.random.default_rng(seed)
    rot = Rotation.random(5, random_state=seed).as_matrix()
    scale = rng.uniform(0.5, 2.0, 5)
    shift = rng.normal(size=(5, 3))
    moved = scale[:, None, None] * np.einsum("nij,vj->nvi", rot, points) + shift[:, None]
    return moved, rot, scale, shift


def test_recovers_a_known_similarity_both_ways() -> None:
    points = np.random.default_rng(0).normal(size=(40, 3))
    moved, rot, scale, shift = _moved(points, 1)
    fit = fit_similarity(points, moved)  # one set onto each frame's
    np.testing.assert_allclose(fit.rotation, rot, atol=1e-10)
    np.testing.assert_allclose(fit.scale, scale, atol=1e-10)
    np.testing.assert_allclose(fit.translation, shift, atol=1e-10)
    np.testing.assert_allclose(fit.apply(points), moved, atol=1e-10)
    np.testing.assert_allclose(fit.matrix()[:, :3, 3], shift, atol=1e-10)
    back = fit_similarity(moved, points)  # each frame's onto one set
    np.testing.assert_allclose(back.apply(moved), np.broadcast_to(points, moved.shape), atol=1e-10)
    np.testing.assert_allclose(back.scale, 1 / scale, atol=1e-10)


def test_points_without_weight_do_not_pull_and_rigid_fits_keep_size() -> None:
    points = np.random.default_rng(2).normal(size=(30, 3))
    moved, rot, _, _ = _moved(points, 3)
    moved[:, :4] += 50.0  # four wild points...
    weights = np.ones(30)
    weights[:4] = 0.0  # ...that the fit is told to ignore
    fit = fit_similarity(points, moved, weights, scale=False)
    np.testing.assert_allclose(fit.rotation, rot, atol=1e-10)
    assert np.all(fit.scale == 1.0)
    assert np.all(np.linalg.det(fit.rotation) > 0)  # proper rotations, never reflections


def test_a_mirror_image_is_fitted_by_a_rotation_not_a_reflection() -> None:
    points = np.random.default_rng(4).normal(size=(20, 3))
    mirrored = (points * np.array([-1.0, 1.0, 1.0]))[None]
    fit = fit_similarity(points, mirrored)
    assert np.linalg.det(fit.rotation[0]) == pytest.approx(1.0)


def test_two_shared_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="per-frame"):
        fit_similarity(np.zeros((4, 3)), np.ones((4, 3)))


def test_mismatched_sets_and_weights_that_say_nothing_are_refused() -> None:
    points = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="alike"):
        fit_similarity(points, np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="positive sum"):
        fit_similarity(points, points, np.zeros(4))
    with pytest.raises(ValueError, match="positive sum"):
        fit_similarity(points, points, np.array([1.0, -1.0, 1.0, 1.0]))
