"""Head model: LBS identities, conventions, batching, and the fast path against a plain loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pytorch3d.transforms import axis_angle_to_matrix

from engine.head.data import HeadModelData
from engine.head.default import JAW_OPEN_RAD, build_default_head, jaw_weights
from engine.head.model import HeadControls, HeadModel, orbit_vertices, pose_rotation


@pytest.fixture(scope="module")
def bare() -> HeadModel:
    return HeadModel(build_default_head(basis_path=None))


def _with_random_blendshapes(data: HeadModelData, seed: int = 0) -> HeadModelData:
    rng = np.random.default_rng(seed)
    e = len(data.expression_names)
    j = data.num_joints
    return dataclasses.replace(
        data,
        exprdirs=rng.normal(0, 0.1, (data.num_vertices, 3, e)).astype(np.float32),
        posedirs=rng.normal(0, 0.05, (9 * (j - 1), data.num_vertices * 3)).astype(np.float32),
        expression_inert=(False,) * e,
    )


def reference_lbs(data: HeadModelData, c: HeadControls, b: int) -> np.ndarray:
    """Plain per-joint, per-vertex loop implementation of the same model, in float64."""
    v = data.v_template.astype(np.float64) + data.exprdirs @ c.expression[b].double().numpy()
    joints = data.j_regressor @ v
    aa = np.zeros((data.num_joints, 3))
    names = list(data.joint_names)
    aa[names.index("jaw")] = c.jaw[b].double().numpy()
    if data.jaw_from_expression is not None:
        aa[names.index("jaw")] += c.expression[b].double().numpy() @ data.jaw_from_expression
    aa[names.index("neck")] = c.neck[b].double().numpy()
    rots = axis_angle_to_matrix(torch.tensor(aa)).numpy()
    feature = np.concatenate([(rots[i] - np.eye(3)).ravel() for i in range(1, data.num_joints)])
    v = v + (feature @ data.posedirs).reshape(-1, 3)
    world: list[np.ndarray] = []
    for i, parent in enumerate(data.parents):
        local = np.eye(4)
        local[:3, :3] = rots[i]
        local[:3, 3] = joints[i] - (joints[parent] if parent >= 0 else 0.0)
        world.append(local if parent < 0 else world[parent] @ local)
    out = np.zeros_like(v)
    for k in range(v.shape[0]):
        acc = np.zeros(3)
        for i, g in enumerate(world):
            p = g[:3, :3] @ (v[k] - joints[i]) + g[:3, 3]
            acc += data.lbs_weights[k, i] * p
        out[k] = acc
    rot = c.rotation[b].double().numpy()
    return out @ rot.T + c.translation[b].double().numpy()


def _random_controls(model: HeadModel, batch: int, seed: int) -> HeadControls:
    g = torch.Generator().manual_seed(seed)
    angles = (torch.rand(batch, 3, generator=g) - 0.5) * 60
    return HeadControls(
        expression=torch.rand(batch, model.num_expressions, generator=g),
        rotation=pose_rotation(angles[:, 0], angles[:, 1], angles[:, 2]),
        translation=torch.randn(batch, 3, generator=g) * 5,
        jaw=(torch.rand(batch, 3, generator=g) - 0.5) * 0.6,
        neck=(torch.rand(batch, 3, generator=g) - 0.5) * 0.6,
    )


def test_zero_controls_give_template(bare: HeadModel) -> None:
    out = bare(bare.neutral_controls(batch=2))
    template = torch.as_tensor(bare.data.v_template)
    torch.testing.assert_close(out.vertices, template.expand(2, -1, -1), atol=1e-5, rtol=0)


def test_jaw_rotation_moves_only_jaw_skinned_vertices(bare: HeadModel) -> None:
    c = bare.neutral_controls()
    c = dataclasses.replace(c, jaw=torch.tensor([[0.3, 0.0, 0.0]]))
    moved = (bare(c).vertices[0] - torch.as_tensor(bare.data.v_template)).norm(dim=-1)
    skinned = torch.as_tensor(bare.data.lbs_weights[:, 2] > 0)
    assert moved[~skinned].max() < 1e-5
    assert moved[skinned].min() > 0
    # Chin fully on the jaw: rotates rigidly about the hinge, so its distance to the hinge is kept.
    hinge = torch.as_tensor(bare.data.j_regressor[2] @ bare.data.v_template)
    chin = 152
    before = (torch.as_tensor(bare.data.v_template[chin]) - hinge).norm()
    after = (bare(c).vertices[0, chin] - hinge).norm()
    torch.testing.assert_close(before, after, atol=1e-4, rtol=0)
    assert moved[chin] > 1.0  # cm: a 0.3 rad jaw swing moves the chin visibly


def test_neck_rotation_moves_neck_and_its_children(bare: HeadModel) -> None:
    c = dataclasses.replace(bare.neutral_controls(), neck=torch.tensor([[0.0, 0.4, 0.0]]))
    moved = (bare(c).vertices[0] - torch.as_tensor(bare.data.v_template)).norm(dim=-1)
    # Every vertex hangs off the neck (directly or through the jaw); only the neck pivot itself stays.
    assert (moved > 1e-3).float().mean() > 0.99


def test_jaw_open_is_rigged_to_the_jaw_joint(bare: HeadModel) -> None:
    k = bare.expression_names.index("jawOpen")
    assert not bare.data.expression_inert[k]
    expr = torch.zeros(1, bare.num_expressions)
    expr[0, k] = 1.0
    c = dataclasses.replace(bare.neutral_controls(), expression=expr)
    opened = bare(c).vertices[0]
    jaw = torch.tensor([[JAW_OPEN_RAD, 0.0, 0.0]])
    by_joint = bare(dataclasses.replace(bare.neutral_controls(), jaw=jaw))
    torch.testing.assert_close(opened, by_joint.vertices[0])
    lips_part = float(opened[13, 1] - opened[14, 1])  # upper minus lower inner lip, cm
    assert 2.0 < lips_part < 5.0


def test_jaw_weights_split_the_lips() -> None:
    data = build_default_head(basis_path=None)
    w = jaw_weights(data.v_template)
    assert w[14] == pytest.approx(1.0) and w[152] == pytest.approx(1.0)  # lower lip, chin
    assert w[13] == pytest.approx(0.0) and w[10] == pytest.approx(0.0)  # upper lip, forehead


def test_head_rotation_and_translation(bare: HeadModel) -> None:
    rot = pose_rotation(torch.tensor([20.0]), torch.tensor([-10.0]), torch.tensor([5.0]))
    t = torch.tensor([[1.0, -2.0, -60.0]])
    c = dataclasses.replace(bare.neutral_controls(), rotation=rot, translation=t)
    expected = torch.as_tensor(bare.data.v_template) @ rot[0].T + t
    torch.testing.assert_close(bare(c).vertices[0], expected, atol=1e-4, rtol=0)


def test_pose_rotation_conventions() -> None:
    nose = torch.tensor([0.0, 0.0, 7.0])
    zero = torch.zeros(1)
    ten = torch.full((1,), 10.0)
    assert (pose_rotation(ten, zero, zero)[0] @ nose)[0] > 0  # yaw turns the face to +x
    assert (pose_rotation(zero, ten, zero)[0] @ nose)[1] < 0  # pitch turns it down
    top = torch.tensor([0.0, 8.0, 0.0])
    assert (pose_rotation(zero, zero, ten)[0] @ top)[0] < 0  # roll tilts the top to -x


def test_matches_plain_reference_with_correctives_and_expressions() -> None:
    data = _with_random_blendshapes(build_default_head(basis_path=None))
    model = HeadModel(data)
    c = _random_controls(model, batch=3, seed=1)
    out = model(c).vertices.double().numpy()
    for b in range(3):
        np.testing.assert_allclose(out[b], reference_lbs(data, c, b), atol=2e-4)


def test_batch_equals_single() -> None:
    model = HeadModel(_with_random_blendshapes(build_default_head(basis_path=None)))
    c = _random_controls(model, batch=4, seed=2)
    whole = model(c).vertices
    for b in range(4):
        one = HeadControls(
            *(getattr(c, f.name)[b : b + 1] for f in dataclasses.fields(c) if f.name != "shape")
        )
        torch.testing.assert_close(model(one).vertices[0], whole[b], atol=1e-5, rtol=0)


def test_differentiable(bare: HeadModel) -> None:
    model = HeadModel(_with_random_blendshapes(build_default_head(basis_path=None)))
    c = _random_controls(model, batch=2, seed=3)
    expr = c.expression.clone().requires_grad_(True)
    jaw = c.jaw.clone().requires_grad_(True)
    out = model(dataclasses.replace(c, expression=expr, jaw=jaw))
    out.vertices.square().sum().backward()
    assert expr.grad is not None and expr.grad.abs().sum() > 0
    assert jaw.grad is not None and jaw.grad.abs().sum() > 0


def test_wrong_expression_size_is_named(bare: HeadModel) -> None:
    c = dataclasses.replace(bare.neutral_controls(), expression=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="expression must be"):
        bare(c)


def test_orbit_keeps_centre_and_distances(bare: HeadModel) -> None:
    out = bare(bare.neutral_controls())
    view = pose_rotation(torch.tensor([30.0]), torch.tensor([10.0]), torch.zeros(1))
    orbited = orbit_vertices(out.vertices, out.centre, view)
    d0 = (out.vertices - out.centre[:, None]).norm(dim=-1)
    d1 = (orbited - out.centre[:, None]).norm(dim=-1)
    torch.testing.assert_close(d0, d1, atol=1e-4, rtol=0)
    assert (orbited - out.vertices).abs().max() > 1.0


def test_invalid_data_is_named() -> None:
    data = build_default_head(basis_path=None)
    with pytest.raises(ValueError, match="lbs_weights rows must sum to 1"):
        dataclasses.replace(data, lbs_weights=data.lbs_weights * 2)
    with pytest.raises(ValueError, match="faces index vertices"):
        dataclasses.replace(data, faces=data.faces + 1000)


def test_flame_file_drives_the_same_model(tmp_path) -> None:
    """A FLAME-format file (generated) loads and evaluates: template at zero, jaw moves only the
    vertices skinned to it, and the result matches the plain reference with its correctives."""
    from engine.head.flame_file import load_flame
    from tests.flame_fixture import write_flame_like

    path = tmp_path / "generic_model.pkl"
    write_flame_like(path, num_vertices=60)
    data = load_flame(path)
    # The fixture skins every vertex to every joint; take the jaw off half of them.
    weights = data.lbs_weights.copy()
    weights[::2, data.joint_names.index("jaw")] = 0.0
    data = dataclasses.replace(data, lbs_weights=weights / weights.sum(axis=1, keepdims=True))
    model = HeadModel(data)
    out = model(model.neutral_controls())
    torch.testing.assert_close(out.vertices[0], torch.as_tensor(data.v_template), atol=1e-5, rtol=0)
    jaw = dataclasses.replace(model.neutral_controls(), jaw=torch.tensor([[0.2, 0.0, 0.0]]))
    moved = (model(jaw).vertices[0] - torch.as_tensor(data.v_template)).norm(dim=-1)
    # Pose correctives add motion everywhere they are non-zero; without them only skinned vertices move.
    still = HeadModel(dataclasses.replace(data, posedirs=np.zeros_like(data.posedirs)))
    moved_lbs = (still(jaw).vertices[0] - torch.as_tensor(data.v_template)).norm(dim=-1)
    jaw_skinned = torch.as_tensor(data.lbs_weights[:, data.joint_names.index("jaw")] > 0)
    assert bool((~jaw_skinned).any()) and moved_lbs[~jaw_skinned].max() < 1e-6
    assert moved.max() > 0
    c = _random_controls(model, batch=2, seed=4)
    got = model(c).vertices.double().numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], reference_lbs(data, c, b), atol=1e-4)
