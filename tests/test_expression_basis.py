"""Expression basis fit on synthetic captures with a known answer, plus file round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.head import regions as face_regions
from engine.head.canonical_mesh import load_canonical_mesh
from engine.head.default import ARKIT_NAMES, build_default_head, load_basis
from engine.training import basis as eb
from engine.training.alignment import ALIGNMENTS, skull_weights

MP_NAMES = ("_neutral", *[n for n in ARKIT_NAMES if n != "tongueOut"])
FRAMES = 200


def _truth(template: np.ndarray) -> dict[str, np.ndarray]:
    """Known shapes (V, 3) living inside each name's region, keeping still the points that the
    alignment treats as rigid (as real expressions do, which is why MediaPipe chose them)."""
    still = (skull_weights(load_canonical_mesh()) == 0)[:, None]
    down = np.array([0.0, -1.0, 0.2])
    up = np.array([0.0, 1.0, 0.0])
    out = np.array([1.0, 0.3, 0.0])
    shapes = {
        "mouthPucker": face_regions.region_weights("mouthPucker", template)[:, None] * down * 1.5,
        "browInnerUp": face_regions.region_weights("browInnerUp", template)[:, None] * up * 0.8,
        "mouthSmileLeft": face_regions.region_weights("mouthSmileLeft", template)[:, None]
        * out
        * 0.7,
        "mouthSmileRight": face_regions.region_weights("mouthSmileRight", template)[:, None]
        * out
        * [-1, 1, 1]
        * 0.7,
    }
    return {name: shape * still for name, shape in shapes.items()}


def _synthetic_capture(
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Landmarks as a weak-perspective tracker sees them (N, 478, 3), the same in the world frame
    of an identity head pose (N, 478, 3), the scores (N, 52) and the true shapes."""
    rng = np.random.default_rng(seed)
    mesh = load_canonical_mesh()
    template = mesh.vertices.astype(np.float64)
    truth = _truth(template)
    scores = np.zeros((FRAMES, len(MP_NAMES)))
    t = np.linspace(0, 20, FRAMES)
    scores[:, MP_NAMES.index("mouthPucker")] = 0.3 + 0.25 * np.sin(t)
    scores[:, MP_NAMES.index("jawOpen")] = 0.2 + 0.15 * np.cos(0.7 * t)
    scores[:, MP_NAMES.index("browInnerUp")] = rng.uniform(0, 0.6, FRAMES)
    smile = rng.uniform(0, 0.8, FRAMES)
    scores[:, MP_NAMES.index("mouthSmileLeft")] = smile
    scores[:, MP_NAMES.index("mouthSmileRight")] = np.clip(
        smile + rng.normal(0, 0.02, FRAMES), 0, 1
    )
    scores[:, MP_NAMES.index("eyeWideLeft")] = 0.01  # constant: must stay inert
    rig = eb.jaw_rig_displacement(template, scores[:, MP_NAMES.index("jawOpen")])
    shapes = (
        template + rig + sum(scores[:, MP_NAMES.index(n), None, None] * s for n, s in truth.items())
    )
    shapes = shapes + rng.normal(0, 0.02, shapes.shape)
    # Seen by a weak-perspective tracker: rotated, scaled, shifted, y and depth flipped to pixels.
    rot = Rotation.from_euler("yxz", rng.uniform(-20, 20, (FRAMES, 3)), degrees=True).as_matrix()
    scale = rng.uniform(8, 12, FRAMES)[:, None, None]
    shift = rng.uniform(80, 160, (FRAMES, 1, 3))
    seen = scale * np.einsum("nij,nlj->nli", rot, shapes) + shift
    landmarks_px = np.concatenate(
        [np.stack((seen[..., 0], -seen[..., 1], -seen[..., 2]), -1), np.zeros((FRAMES, 10, 3))],
        axis=1,
    )
    world = np.concatenate([shapes, np.zeros((FRAMES, 10, 3))], axis=1)
    return landmarks_px, world, scores, truth


@pytest.fixture(scope="module")
def fitted() -> tuple[eb.FitResult, dict[str, np.ndarray]]:
    landmarks_px, world, scores, truth = _synthetic_capture()
    mesh = load_canonical_mesh()
    eye = np.broadcast_to(np.eye(3), (FRAMES, 3, 3))
    result = eb.fit(landmarks_px, world, eye, np.zeros((FRAMES, 3)), scores, MP_NAMES, mesh)
    return result, truth


def test_recovers_known_shapes_inside_their_regions(
    fitted: tuple[eb.FitResult, dict[str, np.ndarray]],
) -> None:
    result, truth = fitted
    basis = result.basis
    for name in ("mouthPucker", "browInnerUp"):
        got = basis.exprdirs[:, :, ARKIT_NAMES.index(name)]
        want = truth[name]
        moving = np.linalg.norm(want, axis=1) > 0.5 * np.linalg.norm(want, axis=1).max()
        rel = (
            np.linalg.norm(got[moving] - want[moving], axis=1).mean()
            / np.linalg.norm(want[moving], axis=1).mean()
        )
        assert rel < 0.25, f"{name}: relative error {rel:.2f}"


def test_jaw_rig_explains_jaw_opening(fitted: tuple[eb.FitResult, dict[str, np.ndarray]]) -> None:
    """The data's jaw motion comes from the rig, so the learned jawOpen blendshape stays small."""
    basis = fitted[0].basis
    template = load_canonical_mesh().vertices.astype(np.float64)
    rig = eb.jaw_rig_displacement(template, np.ones(1))[0]
    learned = basis.exprdirs[:, :, ARKIT_NAMES.index("jawOpen")]
    assert np.linalg.norm(learned, axis=1).max() < 0.1 * np.linalg.norm(rig, axis=1).max()


def test_shapes_never_leave_their_region(
    fitted: tuple[eb.FitResult, dict[str, np.ndarray]],
) -> None:
    result, _ = fitted
    template = load_canonical_mesh().vertices
    for k, name in enumerate(ARKIT_NAMES):
        if result.basis.inert[k]:
            continue
        outside = face_regions.region_weights(name, template) < face_regions.MASK_FLOOR
        assert np.abs(result.basis.exprdirs[outside, :, k]).max(initial=0.0) == 0.0, name


def test_correlated_pair_is_tied_and_split_by_side(
    fitted: tuple[eb.FitResult, dict[str, np.ndarray]],
) -> None:
    result, truth = fitted
    assert ("mouthSmileLeft", "mouthSmileRight") in result.basis.tied
    template = load_canonical_mesh().vertices
    left = result.basis.exprdirs[:, :, ARKIT_NAMES.index("mouthSmileLeft")]
    # The left share moves the +x side far more than the -x side.
    plus, minus = template[:, 0] > 1.0, template[:, 0] < -1.0
    assert (
        np.linalg.norm(left[plus], axis=1).mean() > 5 * np.linalg.norm(left[minus], axis=1).mean()
    )
    both = left + result.basis.exprdirs[:, :, ARKIT_NAMES.index("mouthSmileRight")]
    want = truth["mouthSmileLeft"] + truth["mouthSmileRight"]
    moving = np.linalg.norm(want, axis=1) > 0.3
    assert (
        np.linalg.norm(both[moving] - want[moving], axis=1).mean()
        < 0.25 * np.linalg.norm(want[moving], axis=1).mean()
    )


def test_unexercised_and_unobservable_names_are_inert(
    fitted: tuple[eb.FitResult, dict[str, np.ndarray]],
) -> None:
    basis = fitted[0].basis
    for name in ("eyeWideLeft", "cheekPuff", "eyeLookDownLeft", "tongueOut"):
        k = ARKIT_NAMES.index(name)
        assert basis.inert[k] and not basis.exprdirs[:, :, k].any(), name
        assert name in basis.inert_reason
    assert "gaze" in basis.inert_reason["eyeLookDownLeft"]


def test_report_beats_mean_shape_on_held_out_frames(
    fitted: tuple[eb.FitResult, dict[str, np.ndarray]],
) -> None:
    report = fitted[0].report
    errors = report["test_error"]
    assert isinstance(errors, dict)
    assert errors["ours"]["all_inner"]["cm"] < 0.5 * errors["mean_shape"]["all_inner"]["cm"]
    assert set(errors["ours"]) >= {"mouth_jaw", "eyes", "brows", "nose", "cheeks", "outline"}


def test_report_compares_alignments(fitted: tuple[eb.FitResult, dict[str, np.ndarray]]) -> None:
    comparison = fitted[0].report["alignment_comparison"]
    assert isinstance(comparison, dict) and set(comparison) == set(ALIGNMENTS)
    # The synthetic world landmarks are exact, so the perspective route fits at noise level.
    assert comparison["perspective"]["plain_ridge_cm"] < 0.06


def test_save_and_load_round_trip(
    fitted: tuple[eb.FitResult, dict[str, np.ndarray]], tmp_path
) -> None:
    path = tmp_path / "basis.npz"
    eb.save_basis(fitted[0].basis, path)
    offset, exprdirs, names, inert = load_basis(path)
    np.testing.assert_array_equal(exprdirs, fitted[0].basis.exprdirs)
    assert names == ARKIT_NAMES and inert == fitted[0].basis.inert
    head = build_default_head(path)
    assert head.expression_inert == inert
    np.testing.assert_allclose(head.v_template, load_canonical_mesh().vertices + offset, atol=1e-6)


def test_bad_basis_file_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="not an expression basis file"):
        load_basis(bad)
    with pytest.raises(FileNotFoundError, match="expression basis"):
        load_basis(tmp_path / "missing.npz")


def test_too_few_frames_is_named() -> None:
    landmarks_px, world, scores, _ = _synthetic_capture()
    eye = np.broadcast_to(np.eye(3), (5, 3, 3))
    with pytest.raises(ValueError, match="at least 20"):
        eb.fit(
            landmarks_px[:5],
            world[:5],
            eye,
            np.zeros((5, 3)),
            scores[:5],
            MP_NAMES,
            load_canonical_mesh(),
        )


def test_cli_names_a_bad_capture(tmp_path, capsys) -> None:
    out = tmp_path / "basis.npz"
    code = eb.main(
        ["--capture", str(tmp_path / "nowhere"), "--out", str(out), "--report", str(tmp_path / "r")]
    )
    assert code == 2
    assert "is not a capture directory" in capsys.readouterr().err
    assert not out.exists()
