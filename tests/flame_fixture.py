"""Small FLAME-format pickles, written the way the real files are, for `engine.head.flame_file`'s tests.

FLAME 2020's `generic_model.pkl` was written by Python 2 with chumpy installed, at pickle
protocol 2. `write_flame_pickle(..., use_chumpy=True)` reproduces that byte structure without
Python 2 or chumpy: a pure-Python pickler that
- writes every str and bytes as a Python 2 byte string (SHORT_BINSTRING / BINSTRING), which is
  what the loader's `encoding="latin1"` has to turn back into text and array bytes;
- names globals as Python 2-era libraries did: `numpy.core.multiarray._reconstruct`,
  `numpy.dtype` called as dtype('f8', 0, 1), `__builtin__.set`, `scipy.sparse.csc.csc_matrix`
  and `chumpy.ch.Ch`;
- stores `shapedirs` and `posedirs` as chumpy `Ch` objects: NEWOBJ of `chumpy.ch.Ch` then BUILD
  with the instance dict that chumpy's `Ch.__getstate__` returns (everything `Ch.__new__` and
  `Ch.set(x=...)` put there, minus the `_parents` and `_cache` weak-reference caches), and
  `J_regressor` as a csc_matrix with SciPy's instance dict.
The stand-in classes carry chumpy's and SciPy's module and class names; the pickler writes those
names directly instead of importing them to check, so no fake module is ever put in sys.modules.
`use_chumpy=False` writes plain numpy arrays and a real scipy csc_matrix with today's Python 3
pickler (FLAME 2023 style), at protocol 2 unless told otherwise.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import scipy.sparse

SEGMENTS = 10  # vertices per ring of the test mesh
RADIUS_M = 0.09  # about a head's
NUM_JOINTS = 5
ROOT_SENTINEL = 2**32 - 1  # the root's "parent" in FLAME's kintree_table
FLAME_PARENTS = (ROOT_SENTINEL, 0, 1, 1, 1)  # global <- neck <- jaw, eye_left, eye_right
NUM_SHAPE = 300
NUM_EXPR = 100
NUM_POSE = 9 * (NUM_JOINTS - 1)
SCIPY_MAXPRINT = 50  # scipy.sparse's default, part of its pickled instance dict


class FakeChumpy:
    """Pickles like a chumpy object: `chumpy_class` (via `fake_chumpy`) with these terms.

    The state is what chumpy's `Ch.__getstate__` returns: the attributes `Ch.__new__` sets
    (`_dirty_vars`, `_itr`, `_make_dense`, `_make_sparse`, `_depends_on_deps`) and the terms set
    through `Ch.set`, without the `_parents` and `_cache` weak-reference caches.
    """

    terms: dict[str, Any]

    def __getstate__(self) -> dict[str, Any]:
        return {
            "_dirty_vars": set(self.terms),
            "_itr": None,
            "_make_dense": False,
            "_make_sparse": False,
            "_depends_on_deps": {},
            **self.terms,
        }


_FAKE_CHUMPY_CLASSES: dict[str, type[FakeChumpy]] = {}


def fake_chumpy(chumpy_class: str, **terms: Any) -> FakeChumpy:
    """An object that pickles as an instance of `chumpy_class` (e.g. "chumpy.ch.Ch")."""
    if chumpy_class not in _FAKE_CHUMPY_CLASSES:
        module, name = chumpy_class.rsplit(".", 1)
        _FAKE_CHUMPY_CLASSES[chumpy_class] = type(
            name, (FakeChumpy,), {"__module__": module, "__qualname__": name}
        )
    obj = _FAKE_CHUMPY_CLASSES[chumpy_class]()
    obj.terms = terms
    return obj


def chumpy_ch(x: np.ndarray) -> FakeChumpy:
    """A chumpy `Ch` wrapping `x`; Ch.__new__ stores it as float64."""
    return fake_chumpy("chumpy.ch.Ch", x=np.asarray(x, dtype=np.float64))


class FakeOldCsc:
    """Pickles like a Python 2-era scipy.sparse.csc.csc_matrix: SciPy's own instance dict."""

    def __init__(self, dense: np.ndarray) -> None:
        m = scipy.sparse.csc_matrix(dense)
        self.state = {
            "_shape": tuple(int(n) for n in m.shape),
            "maxprint": SCIPY_MAXPRINT,
            "format": "csc",
            "indices": m.indices,
            "indptr": m.indptr,
            "data": m.data,
            "_has_sorted_indices": True,
        }

    def __getstate__(self) -> dict[str, Any]:
        return self.state


FakeOldCsc.__module__, FakeOldCsc.__qualname__ = "scipy.sparse.csc", "csc_matrix"

# Python 2-era names for what a FLAME file references. Fake classes name themselves.
_NP_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]
_PY2_GLOBALS: dict[Any, tuple[str, str]] = {
    _NP_RECONSTRUCT: ("numpy.core.multiarray", "_reconstruct"),
    np.ndarray: ("numpy", "ndarray"),
    np.dtype: ("numpy", "dtype"),
    set: ("__builtin__", "set"),
}
# The pure-Python pickler's type -> save method table, with str and bytes replaced below.
_PY2_DISPATCH: Any = dict(pickle._Pickler.dispatch)


class Python2Pickler(pickle._Pickler):
    """Writes protocol-2 pickles with Python 2's string opcodes and library names."""

    # The pure-Python pickler's internals that typeshed leaves out.
    write: Callable[[bytes], Any]
    memoize: Callable[[Any], None]
    dispatch = _PY2_DISPATCH

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, protocol=2)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if isinstance(obj, type) and obj.__module__.split(".")[0] in ("chumpy", "scipy"):
            module, qualname = obj.__module__, obj.__qualname__
        elif obj in _PY2_GLOBALS:
            module, qualname = _PY2_GLOBALS[obj]
        else:
            raise pickle.PicklingError(f"no Python 2 name for {obj!r}")
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.dtype):
            func, args, state = cast(tuple[Any, Any, Any], obj.__reduce__())
            return func, (args[0], 0, 1), state  # Python 2 numpy passed align/copy as ints
        return NotImplemented


def _save_py2_string(pickler: Python2Pickler, obj: str | bytes) -> None:
    """Python 2 had one string type, written as (SHORT_)BINSTRING and memoized."""
    data = obj.encode("latin1") if isinstance(obj, str) else obj
    if len(data) < 256:
        pickler.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
        pickler.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
    pickler.memoize(obj)


_PY2_DISPATCH[str] = _save_py2_string
_PY2_DISPATCH[bytes] = _save_py2_string


def flame_like_arrays(
    *, num_vertices: int = 60, rng_seed: int = 0, num_expr: int = NUM_EXPR
) -> dict[str, Any]:
    """A small FLAME-layout model as plain numpy (float64 as the real file), with its extra keys.

    The mesh is a band of `num_vertices // SEGMENTS` rings around +y (y up, z forward, meters),
    closed around the back, so it has triangles that straddle a cylindrical seam.
    """
    if num_vertices % SEGMENTS or num_vertices < 2 * SEGMENTS:
        raise ValueError(f"num_vertices must be a multiple of {SEGMENTS}, at least {2 * SEGMENTS}")
    rng = np.random.default_rng(rng_seed)
    rings = num_vertices // SEGMENTS
    lat = np.linspace(-0.8, 1.0, rings)[:, None]  # (R, 1) radians
    lon = np.linspace(0.0, 2.0 * np.pi, SEGMENTS, endpoint=False)[None, :] + 0.1  # (1, S)
    xyz = np.stack(
        np.broadcast_arrays(
            np.cos(lat) * np.sin(lon), np.sin(lat) + 0.0 * lon, np.cos(lat) * np.cos(lon)
        ),
        axis=-1,
    )  # (R, S, 3)
    v_template = RADIUS_M * xyz.reshape(-1, 3) + rng.normal(0.0, 1e-3, (num_vertices, 3))
    faces = []
    for r in range(rings - 1):
        for s in range(SEGMENTS):
            a, b = r * SEGMENTS + s, r * SEGMENTS + (s + 1) % SEGMENTS
            c, d = a + SEGMENTS, b + SEGMENTS
            faces += [(a, b, d), (a, d, c)]
    f = np.asarray(faces, dtype=np.uint32)  # (F, 3)
    normals = np.cross(
        v_template[f[:, 1]] - v_template[f[:, 0]], v_template[f[:, 2]] - v_template[f[:, 0]]
    )
    outward = (normals * v_template[f].mean(axis=1)).sum(axis=1) > 0
    f[~outward] = f[~outward][:, ::-1]  # counter-clockwise seen from outside

    j_regressor = np.zeros((NUM_JOINTS, num_vertices))
    for j in range(NUM_JOINTS):
        picked = rng.choice(num_vertices, size=6, replace=False)
        j_regressor[j, picked] = rng.dirichlet(np.ones(6))
    weights = rng.dirichlet(np.ones(NUM_JOINTS), size=num_vertices)  # (V, J), rows sum to 1
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(0.0, 1e-3, (num_vertices, 3, NUM_SHAPE + num_expr)),
        "posedirs": rng.normal(0.0, 1e-3, (num_vertices, 3, NUM_POSE)),
        "J_regressor": j_regressor,
        "weights": weights,
        "weights_prior": weights.copy(),
        "kintree_table": np.asarray([FLAME_PARENTS, range(NUM_JOINTS)], dtype=np.int64),
        "f": f,
        "J": j_regressor @ v_template,
        "vert_sym_idxs": np.arange(num_vertices, dtype=np.int64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_flame_pickle(
    path: Path, model: dict[str, Any], *, use_chumpy: bool, protocol: int = 2
) -> None:
    """Write `model` (as from `flame_like_arrays`, possibly edited) in 2020 or 2023 style."""
    out = dict(model)
    if use_chumpy:
        for key in ("shapedirs", "posedirs"):
            if isinstance(out.get(key), np.ndarray):
                out[key] = chumpy_ch(out[key])
        if isinstance(out.get("J_regressor"), np.ndarray):
            out["J_regressor"] = FakeOldCsc(out["J_regressor"])
        with path.open("wb") as f:
            Python2Pickler(f).dump(out)
    else:
        if isinstance(out.get("J_regressor"), np.ndarray):
            out["J_regressor"] = scipy.sparse.csc_matrix(out["J_regressor"])
        if isinstance(out.get("kintree_table"), np.ndarray):
            out["kintree_table"] = out["kintree_table"].astype(np.uint32)
        with path.open("wb") as f:
            pickle.dump(out, f, protocol=protocol)


def write_flame_like(
    path: Path,
    *,
    num_vertices: int = 60,
    use_chumpy: bool = True,
    rng_seed: int = 0,
    num_expr: int = NUM_EXPR,
    protocol: int = 2,
) -> dict[str, Any]:
    """Write a small FLAME-format pickle to `path`; return its arrays (J_regressor dense)."""
    model = flame_like_arrays(num_vertices=num_vertices, rng_seed=rng_seed, num_expr=num_expr)
    write_flame_pickle(path, model, use_chumpy=use_chumpy, protocol=protocol)
    return model
