"""engine.head.flame_file: FLAME pickles (2020 chumpy / Python 2 style and 2023 plain style) into
HeadModelData, checked array by array against the generator's raw arrays; UVs; refusals."""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse

from engine.head.flame_file import (
    FLAME_JOINT_NAMES,
    cylindrical_face_uvs,
    load_flame,
    obj_face_uvs,
)
from tests.flame_fixture import (
    NUM_POSE,
    NUM_SHAPE,
    fake_chumpy,
    flame_like_arrays,
    write_flame_like,
    write_flame_pickle,
)

STYLES = pytest.mark.parametrize("use_chumpy", [True, False], ids=["flame2020", "flame2023"])


@STYLES
def test_every_array_matches_the_file(tmp_path: Path, use_chumpy: bool) -> None:
    path = tmp_path / "generic_model.pkl"
    raw = write_flame_like(path, use_chumpy=use_chumpy, rng_seed=3)
    model = load_flame(path)
    v = raw["v_template"].shape[0]

    np.testing.assert_allclose(model.v_template, raw["v_template"], rtol=1e-6)
    np.testing.assert_allclose(model.shapedirs, raw["shapedirs"][:, :, :NUM_SHAPE], rtol=1e-6)
    np.testing.assert_allclose(model.exprdirs, raw["shapedirs"][:, :, NUM_SHAPE:], rtol=1e-6)
    np.testing.assert_allclose(model.j_regressor, raw["J_regressor"], rtol=1e-6)
    np.testing.assert_allclose(model.lbs_weights, raw["weights"], rtol=1e-6)
    np.testing.assert_array_equal(model.faces, raw["f"].astype(np.int64))
    np.testing.assert_array_equal(model.parents, [-1, 0, 1, 1, 1])
    assert model.posedirs.shape == (NUM_POSE, v * 3)
    for array in (model.v_template, model.shapedirs, model.exprdirs, model.posedirs):
        assert array.dtype == np.float32
    assert model.faces.dtype == np.int64 and model.parents.dtype == np.int64
    assert model.face_uvs.shape == (len(raw["f"]), 3, 2)
    assert model.joint_names == FLAME_JOINT_NAMES
    assert model.expression_names == tuple(f"exp_{i:03d}" for i in range(100))
    assert model.expression_inert == (False,) * 100
    assert model.units == "m"
    assert model.source == "generic_model.pkl"


@STYLES
def test_posedirs_follow_flames_pose_feature_convention(tmp_path: Path, use_chumpy: bool) -> None:
    path = tmp_path / "m.pkl"
    raw = write_flame_like(path, use_chumpy=use_chumpy)
    model = load_flame(path)
    v = raw["v_template"].shape[0]
    for k in (0, 1, 8, 9, 20, NUM_POSE - 1):
        one_hot = np.zeros(NUM_POSE, dtype=np.float32)
        one_hot[k] = 1.0
        offsets = (one_hot @ model.posedirs).reshape(v, 3)  # (V, 3): x, y, z per vertex
        np.testing.assert_allclose(offsets, raw["posedirs"][:, :, k], rtol=1e-6)
    # A whole feature: (R - I) of the non-root joints, as chumpy's posedirs.dot(lrotmin(pose)).
    feature = np.random.default_rng(1).normal(size=(2, NUM_POSE))
    expected = np.einsum("vck,bk->bvc", raw["posedirs"], feature)  # (B, V, 3)
    np.testing.assert_allclose((feature @ model.posedirs).reshape(2, v, 3), expected, atol=1e-9)


def test_num_shape_and_num_expr_select_from_flames_fixed_layout(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    raw = write_flame_like(path)
    model = load_flame(path, num_shape=10, num_expr=5)
    assert model.shapedirs.shape[2] == 10 and model.exprdirs.shape[2] == 5
    # The expression block starts at component 300 whatever num_shape is.
    np.testing.assert_allclose(model.exprdirs, raw["shapedirs"][:, :, 300:305], rtol=1e-6)
    assert model.expression_names == ("exp_000", "exp_001", "exp_002", "exp_003", "exp_004")

    clamped = load_flame(path, num_shape=1000, num_expr=1000)
    assert clamped.shapedirs.shape[2] == 300 and clamped.exprdirs.shape[2] == 100

    short = tmp_path / "short.pkl"
    raw_short = write_flame_like(short, num_expr=20)
    model_short = load_flame(short)
    assert model_short.exprdirs.shape[2] == 20 and len(model_short.expression_names) == 20
    np.testing.assert_allclose(model_short.exprdirs, raw_short["shapedirs"][:, :, 300:], rtol=1e-6)

    no_identity = load_flame(path, num_shape=0, num_expr=0)
    assert no_identity.shapedirs.shape == (60, 3, 0) and no_identity.expression_names == ()
    with pytest.raises(ValueError, match="num_shape and num_expr"):
        load_flame(path, num_expr=-1)


def test_the_2020_fixture_has_python2_chumpy_byte_structure(tmp_path: Path) -> None:
    # Guards the fixture itself: the loader is only exercised on the real structure if this holds.
    path = tmp_path / "m.pkl"
    write_flame_like(path, use_chumpy=True)
    ops = list(pickletools.genops(path.read_bytes()))
    names = {op.name for op, _, _ in ops}
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    assert globals_ == {
        "chumpy.ch Ch",
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
        "__builtin__ set",
        "scipy.sparse.csc csc_matrix",
    }
    assert "NEWOBJ" in names and "BINSTRING" in names
    assert not names & {"BINUNICODE", "SHORT_BINUNICODE", "STACK_GLOBAL", "FRAME"}


def test_loading_never_imports_chumpy_or_old_scipy_paths(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    write_flame_like(path, use_chumpy=True)
    before = set(sys.modules)
    load_flame(path)
    assert not {
        m for m in set(sys.modules) - before if m.startswith(("chumpy", "scipy.sparse.csc"))
    }
    assert "chumpy" not in sys.modules


def test_modern_protocol_pickles_load_too(tmp_path: Path) -> None:
    old, new = tmp_path / "old.pkl", tmp_path / "new.pkl"
    write_flame_like(old, use_chumpy=True)
    write_flame_like(new, use_chumpy=False, protocol=pickle.HIGHEST_PROTOCOL)
    a, b = load_flame(old), load_flame(new)
    for field in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "lbs_weights"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_chumpy_reorderings_are_evaluated(tmp_path: Path) -> None:
    model = flame_like_arrays()
    v, k = model["shapedirs"].shape[0], model["shapedirs"].shape[2]
    flat = fake_chumpy("chumpy.ch.Ch", x=model["shapedirs"].ravel())
    model["shapedirs"] = fake_chumpy("chumpy.reordering.Reshape", a=flat, newshape=(v, 3, k))
    order = np.arange(v * 3 * NUM_POSE)
    model["posedirs"] = fake_chumpy(
        "chumpy.reordering.Select",
        a=fake_chumpy("chumpy.ch.Ch", x=model["posedirs"]),
        idxs=order,
        preferred_shape=(v, 3, NUM_POSE),
    )
    model["J"] = fake_chumpy("chumpy.ch_ops.add", a=flat, b=flat)  # unused key: never evaluated
    path = tmp_path / "m.pkl"
    write_flame_pickle(path, model, use_chumpy=True)
    raw = flame_like_arrays()
    loaded = load_flame(path)
    np.testing.assert_allclose(loaded.shapedirs, raw["shapedirs"][:, :, :NUM_SHAPE], rtol=1e-6)
    np.testing.assert_allclose(
        loaded.posedirs, raw["posedirs"].reshape(v * 3, NUM_POSE).T, rtol=1e-6
    )


def test_an_unsupported_chumpy_expression_in_a_needed_key_is_named(tmp_path: Path) -> None:
    model = flame_like_arrays()
    ch = fake_chumpy("chumpy.ch.Ch", x=model["posedirs"])
    model["posedirs"] = fake_chumpy("chumpy.ch_ops.multiply", a=ch, b=ch)
    path = tmp_path / "m.pkl"
    write_flame_pickle(path, model, use_chumpy=True)
    with pytest.raises(ValueError, match=r"m\.pkl: posedirs: chumpy\.ch_ops\.multiply"):
        load_flame(path)


def _write_obj(
    path: Path, vertices: np.ndarray, corners: list[list[tuple[int, int]]], vts: np.ndarray
) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {w:.6f}" for u, w in vts]
    for i, face in enumerate(corners):
        if i % 2:  # both corner spellings FLAME's template and other exporters use
            lines.append("f " + " ".join(f"{vi + 1}/{ti + 1}/{vi + 1}" for vi, ti in face))
        else:
            lines.append("f " + " ".join(f"{vi + 1}/{ti + 1}" for vi, ti in face))
    path.write_text("# head template\n" + "\n".join(lines) + "\n")


def test_uv_obj_gives_per_corner_uvs_with_v_down(tmp_path: Path) -> None:
    pkl, obj = tmp_path / "m.pkl", tmp_path / "head_template.obj"
    raw = write_flame_like(pkl)
    faces = raw["f"].astype(np.int64)
    rng = np.random.default_rng(5)
    vts = rng.uniform(0.0, 1.0, size=(faces.size, 2))  # one vt per corner: seams allowed
    corner_vt = np.arange(faces.size).reshape(faces.shape)  # (F, 3)
    # The OBJ lists the triangles shuffled and with their corners rotated.
    order = rng.permutation(len(faces))
    corners = [
        [(int(faces[f, (c + f) % 3]), int(corner_vt[f, (c + f) % 3])) for c in range(3)]
        for f in order
    ]
    _write_obj(obj, raw["v_template"], corners, vts)
    model = load_flame(pkl, uv_obj=obj)
    expected = vts[corner_vt].astype(np.float32)  # (F, 3, 2)
    expected[..., 1] = 1.0 - expected[..., 1]
    np.testing.assert_allclose(model.face_uvs, expected, atol=1e-6)


def test_uv_obj_problems_are_reported(tmp_path: Path) -> None:
    raw = flame_like_arrays()
    faces = raw["f"].astype(np.int64)
    obj = tmp_path / "t.obj"
    good = [[(int(vi), 0) for vi in face] for face in faces]
    vts = np.full((1, 2), 0.5)

    _write_obj(obj, raw["v_template"], good[1:], vts)  # one triangle missing
    with pytest.raises(ValueError, match="has no triangle with vertices"):
        obj_face_uvs(obj, faces, 60)

    _write_obj(obj, raw["v_template"][:-1], good, vts)
    with pytest.raises(ValueError, match="has 59 vertices, the FLAME model 60"):
        obj_face_uvs(obj, faces, 60)

    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match=r"t\.obj:5: face corner '1' has no texture coordinate"):
        obj_face_uvs(obj, np.array([[0, 1, 2]]), 3)

    obj.write_text("vt 0 0\nf 1/1 2/1 3/9\n")
    with pytest.raises(ValueError, match=r"t\.obj:2: texture index 9 outside 1\.\.1"):
        obj_face_uvs(obj, np.array([[0, 1, 2]]), 3)

    with pytest.raises(FileNotFoundError, match=r"nowhere\.obj"):
        obj_face_uvs(tmp_path / "nowhere.obj", faces, 60)


def test_cylindrical_fallback_uvs(tmp_path: Path) -> None:
    raw = flame_like_arrays(num_vertices=80)
    vertices, faces = raw["v_template"], raw["f"].astype(np.int64)
    uvs = cylindrical_face_uvs(vertices, faces)
    assert uvs.shape == (len(faces), 3, 2) and uvs.dtype == np.float32
    assert uvs.min() >= 0.0 and uvs.max() <= 1.0
    # v points down: the top ring has v == 0, the bottom ring v == 1.
    top, bottom = int(np.argmax(vertices[:, 1])), int(np.argmin(vertices[:, 1]))
    np.testing.assert_allclose(uvs[faces == top][:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(uvs[faces == bottom][:, 1], 1.0, atol=1e-6)
    # Straight ahead (+z) maps to u = 0.5 and +x lies to its right.
    front = int(np.argmax(vertices[:, 2] - np.abs(vertices[:, 0])))
    front_u = uvs[faces == front][:, 0]
    assert np.all(np.abs(front_u - 0.5) < 0.1)
    right = int(np.argmax(vertices[:, 0]))
    assert np.all(uvs[faces == right][:, 0] > 0.6)
    # The mesh closes around the back, yet no triangle is stretched across the map.
    span = uvs[..., 0].max(axis=1) - uvs[..., 0].min(axis=1)
    assert span.max() < 0.25
    # Without uv_obj, load_flame uses exactly this projection.
    model = load_flame(_written(tmp_path, raw))
    np.testing.assert_array_equal(
        model.face_uvs, cylindrical_face_uvs(model.v_template, model.faces)
    )


def _written(tmp_path: Path, model: dict[str, Any], *, use_chumpy: bool = True) -> Path:
    path = tmp_path / "edited.pkl"
    write_flame_pickle(path, model, use_chumpy=use_chumpy)
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"FLAME file not found: .*absent\.pkl"):
        load_flame(tmp_path / "absent.pkl")


def test_garbage_bytes_are_not_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"this is not a pickle\x00\xff" * 10)
    with pytest.raises(ValueError, match=r"garbage\.pkl: not a readable FLAME pickle"):
        load_flame(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable FLAME pickle"):
        load_flame(path)


def test_a_pickled_list_is_not_a_flame_file(tmp_path: Path) -> None:
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError, match="expected a pickled dict of FLAME arrays, got list"):
        load_flame(path)


@pytest.mark.parametrize("key", ["posedirs", "f", "J_regressor"])
def test_missing_keys_are_named(tmp_path: Path, key: str) -> None:
    model = flame_like_arrays()
    del model[key]
    with pytest.raises(ValueError, match=f"missing FLAME keys {key}"):
        load_flame(_written(tmp_path, model))


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("posedirs", lambda m: m["posedirs"][:, :, :35], r"posedirs must be \(60, 3, 36\)"),
        ("shapedirs", lambda m: m["shapedirs"][:50], r"shapedirs must be \(60, 3, K\)"),
        ("v_template", lambda m: m["v_template"][:, :2], r"v_template must be \(V, 3\)"),
        ("weights", lambda m: m["weights"][:, :4], r"weights must be \(60, 5\)"),
        ("J_regressor", lambda m: m["J_regressor"][:, :59], r"J_regressor must be \(5, 60\)"),
        ("f", lambda m: m["f"].astype(np.float64), r"f must be \(F, 3\) integers"),
        ("f", lambda m: m["f"] + 1, r"f must index vertices 0\.\.59"),
        ("kintree_table", lambda m: m["kintree_table"][:1], r"kintree_table must be \(2, J\)"),
        ("v_template", lambda m: m["v_template"] * np.nan, "v_template holds non-finite values"),
        ("bs_type", lambda m: "lrotquat", "bs_type is 'lrotquat'; only 'lrotmin'"),
    ],
)
def test_wrong_shapes_are_named(tmp_path: Path, key: str, bad: Any, message: str) -> None:
    model = flame_like_arrays()
    model[key] = bad(model)
    with pytest.raises(ValueError, match=message):
        load_flame(_written(tmp_path, model))


def test_bad_skinning_weights_are_caught_by_the_contract(tmp_path: Path) -> None:
    model = flame_like_arrays()
    model["weights"] = model["weights"] * 2.0
    with pytest.raises(ValueError, match=r"'edited\.pkl': lbs_weights rows must sum to 1"):
        load_flame(_written(tmp_path, model, use_chumpy=False))


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def test_a_pickle_that_runs_os_system_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model = flame_like_arrays()
    model["v_template"] = _RunsShell(f"touch {marker}")
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(model, protocol=2))
    system = re.escape(f"{os.system.__module__}.system")  # posix.system on Linux
    with pytest.raises(ValueError, match=f"refusing to load class {system} from FLAME file"):
        load_flame(path)
    assert not marker.exists()
    # The same bytes through plain pickle really would run it: the test is not vacuous.
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "eval"),
        ("__builtin__", "getattr"),
        ("subprocess", "check_call"),
        ("numpy", "load"),
    ],
)
def test_globals_outside_the_allowlist_are_refused(tmp_path: Path, module: str, name: str) -> None:
    path = tmp_path / "evil.pkl"
    # PROTO 2, GLOBAL module.name, a one-string argument tuple, REDUCE, STOP.
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"U\x04argsq\x00\x85R.")
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"refusing to load class {module}.{name} from FLAME file: not a FLAME array type"
        ),
    ):
        load_flame(path)


def test_codecs_encode_is_limited_to_latin1(tmp_path: Path) -> None:
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(
        ValueError, match=r"refusing to load class _codecs\.encode \(codec 'zlib'\)"
    ):
        load_flame(path)


@pytest.mark.parametrize(
    "make",
    [
        scipy.sparse.csc_matrix,
        scipy.sparse.csr_matrix,
        scipy.sparse.coo_matrix,
        scipy.sparse.csc_array,
        np.asarray,
    ],
    ids=["csc", "csr", "coo", "csc_array", "dense"],
)
def test_j_regressor_in_any_scipy_layout_or_dense(tmp_path: Path, make: Any) -> None:
    model = flame_like_arrays()
    dense = model["J_regressor"]
    model["J_regressor"] = make(dense)
    loaded = load_flame(_written(tmp_path, model, use_chumpy=False))
    np.testing.assert_allclose(loaded.j_regressor, dense, rtol=1e-6)


@pytest.mark.parametrize("protocol", [0, 1])
def test_text_protocols_rebuild_objects_through_copy_reg(tmp_path: Path, protocol: int) -> None:
    # Protocols 0/1 build new-style objects (here the csc_matrix) with copy_reg._reconstructor.
    path = tmp_path / "old.pkl"
    raw = write_flame_like(path, use_chumpy=False, protocol=protocol)
    assert b"_reconstructor" in path.read_bytes()
    np.testing.assert_allclose(load_flame(path).j_regressor, raw["J_regressor"], rtol=1e-6)


def test_copy_reg_reconstructor_only_builds_stand_ins(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    # _reconstructor(set, object, None): allowed names, but not a class this loader builds.
    path.write_bytes(b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nobject\nNtR.")
    with pytest.raises(ValueError, match=r"refusing to load class copy_reg\._reconstructor of"):
        load_flame(path)
