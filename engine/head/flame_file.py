"""Load a real FLAME model file (`generic_model.pkl`, `flame2023.pkl`) into `HeadModelData`.

The file format, as far as it matters here:
- A pickled dict written by the MPI-IS tools, for FLAME 2017/2020 by Python 2 (protocol 2, so
  `str` values are byte strings: we unpickle with `encoding="latin1"`, which also lets numpy
  rebuild the raw array bytes). Keys used: `v_template` (V, 3), `shapedirs` (V, 3, 300 + E),
  `posedirs` (V, 3, 9 (J - 1)), `J_regressor` (J, V) scipy.sparse CSC, `weights` (V, J),
  `kintree_table` (2, J) whose first row holds the parents (the root's is a sentinel such as
  2**32 - 1), `f` (F, 3) uint32 triangles. `bs_style` ("lbs") and `bs_type` ("lrotmin") are
  checked when present; `J`, `weights_prior`, `vert_sym_idxs` and any other keys are ignored.
  Lengths are in meters. FLAME has V = 5023, F = 9976, J = 5 and 300 identity + 100 expression
  components.
- Some arrays (at least `shapedirs` in FLAME 2020) are chumpy `Ch` objects. chumpy pickles a Ch
  through `object.__reduce_ex__`: the class `chumpy.ch.Ch` (NEWOBJ, or
  `copy_reg._reconstructor` at protocols 0/1) plus its `__dict__` minus two weak-reference caches;
  the value is the numpy array under `x`. We never import chumpy: every `chumpy.*` class is
  replaced by an inert stand-in that keeps the pickled state, and `Ch` (state `x`) and the pure
  reorderings `Select`, `Reshape` and `transpose` are evaluated here with numpy. Any other chumpy
  expression raises ValueError naming it, but only if a key we need holds one.
- scipy.sparse matrices are likewise replaced by stand-ins and densified with numpy, because the
  module paths in old pickles (`scipy.sparse.csc`) are deprecated in current SciPy and we only
  need the dense (J, V) regressor.

Security: a pickle can call any importable function, so this is NOT `pickle.load`. `find_class`
resolves only an explicit allowlist of (module, name) pairs: numpy's array/dtype/scalar
rebuilders, the chumpy and scipy.sparse stand-ins, `set`, `frozenset`, `object`, `bytes`,
`OrderedDict`, a latin-1-only `_codecs.encode` (Python 3's protocol-2 encoding of bytes) and a
`copy_reg._reconstructor` that only builds stand-ins. Nothing is ever imported by a name read from
the file; anything else (`os.system`, `builtins.eval`, `numpy.load`, ...) is refused with
"refusing to load class ... from FLAME file: not a FLAME array type" before it can run. This
guards against code execution, not against a file built to exhaust memory.

Mapping into `HeadModelData`:
- shapedirs = shapedirs[:, :, :num_shape]; exprdirs = shapedirs[:, :, 300:300 + num_expr]
  (the expression block always starts at 300 in a FLAME file; both are clamped to what the file
  has), named exp_000, exp_001, ... and none inert.
- posedirs (V, 3, P) -> (P, V * 3) with out[k, 3 v + c] = posedirs[v, c, k], i.e. FLAME's
  `reshape(-1, P).T`. Pose feature k is entry (k % 9) of the row-major (R - I) of non-root
  joint 1 + k // 9 (chumpy's `lrotmin`), so `feature (B, P) @ posedirs -> (B, V * 3)` and
  `.view(B, V, 3)` gives the per-vertex xyz offsets, as in `engine.head.model`.
- j_regressor dense; lbs_weights = weights; parents = kintree_table[0] with the root set to -1;
  faces int64; joint names global, neck, jaw, eye_left, eye_right when J == 5.
- UVs: the pickle has none. With `uv_obj` (FLAME's `head_template.obj`: `vt` lines and
  `f v/vt ...` triangles) each triangle corner takes its `vt`, with v flipped to point down
  (image convention; OBJ's v points up). Triangles are matched by their vertex indices, so the
  OBJ's face order and corner rotation do not matter. Without it, `cylindrical_face_uvs` is used:
  a cylindrical projection about the vertical (+y) axis through the centre of the head's
  bounding box, u = 0.5 straight ahead (+z) growing towards +x, v = 0 at the top; the seam runs
  down the back of the head. It is not one-to-one (eyeballs and the mouth interior land on the
  face), so a learned neural texture is better served by the real template UVs.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from engine.head.data import HeadModelData

FLAME_SHAPE_COMPONENTS = 300  # identity components before the expression block in `shapedirs`
DEFAULT_NUM_SHAPE = 300
DEFAULT_NUM_EXPR = 100
FLAME_JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")
FLAME_UNITS = "m"
POSE_FEATURES_PER_JOINT = 9  # the 3x3 (R - I) of one non-root joint, row-major
REQUIRED_KEYS = (
    "v_template",
    "shapedirs",
    "posedirs",
    "J_regressor",
    "weights",
    "kintree_table",
    "f",
)
EXPECTED_BS_STYLE = "lbs"  # linear blend skinning
EXPECTED_BS_TYPE = "lrotmin"  # pose feature = (R - I) of the non-root joints
MAX_CHUMPY_DEPTH = 16  # nested chumpy reorderings followed before giving up (guards cycles)
SEAM_SPAN = 0.5  # a triangle whose corners differ by more than this in u straddles the seam


class _RefusedGlobal(pickle.UnpicklingError):
    """Raised from `find_class`; carries the dotted name for the caller's message."""

    def __init__(self, dotted: str) -> None:
        super().__init__(dotted)
        self.dotted = dotted


class _ChumpyStandIn:
    """Takes the place of a chumpy class while unpickling; keeps the pickled state, runs nothing."""

    chumpy_class = "chumpy.ch.Ch"  # set per subclass to the dotted name found in the file

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _SparseStandIn:
    """Takes the place of a scipy.sparse matrix class; keeps its state dict for `_densify`."""

    sparse_format = "csc"

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _CscStandIn(_SparseStandIn):
    sparse_format = "csc"


class _CsrStandIn(_SparseStandIn):
    sparse_format = "csr"


class _CooStandIn(_SparseStandIn):
    sparse_format = "coo"


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    # Python 2 numpy pickled dtypes as dtype('f8', 0, 1); newer numpy wants real booleans there.
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Python 3 writes bytes at protocol 2 as _codecs.encode(str, "latin1"). Other codecs are
    # refused so the file cannot reach arbitrary codec machinery.
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in (
        "latin1",
        "latin-1",
        "iso-8859-1",
    ):
        raise _RefusedGlobal(f"_codecs.encode (codec {encoding!r})")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> object:
    # copy_reg._reconstructor, which protocol 0/1 pickles use for new-style objects such as Ch,
    # restricted to building our stand-ins.
    if not (isinstance(cls, type) and issubclass(cls, (_ChumpyStandIn, _SparseStandIn))):
        raise _RefusedGlobal(f"copy_reg._reconstructor of {cls!r}")
    if base is not object:
        raise _RefusedGlobal(f"copy_reg._reconstructor with base {base!r}")
    return object.__new__(cls)


# numpy's private rebuild functions, taken from numpy's own reduce output so the table does not
# depend on where a numpy version keeps them (numpy.core in 1.x, numpy._core in 2.x).
_NP_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]
_NP_SCALAR = np.float64(0).__reduce__()[0]
_NP_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{
        (module, name): obj
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, obj in (("_reconstruct", _NP_RECONSTRUCT), ("scalar", _NP_SCALAR))
    },
    ("numpy.core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("collections", "OrderedDict"): OrderedDict,
    # Python 2 names builtins `__builtin__`. set: chumpy's `_dirty_vars`; object: the base in
    # copy_reg._reconstructor; bytes: Python 3 writes b"" (an empty array's data) as bytes().
    **{
        (module, name): obj
        for module in ("__builtin__", "builtins")
        for name, obj in (
            ("set", set),
            ("frozenset", frozenset),
            ("object", object),
            ("bytes", bytes),
        )
    },
    **{
        (f"scipy.sparse{sub}", f"{fmt}_{kind}"): cls
        for fmt, cls in (("csc", _CscStandIn), ("csr", _CsrStandIn), ("coo", _CooStandIn))
        for sub in ("", f".{fmt}", f"._{fmt}")
        for kind in ("matrix", "array")
    },
}


class _FlameUnpickler(pickle.Unpickler):
    """An unpickler that can only build FLAME's array types (see the module docstring)."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="latin1")
        self._chumpy_classes: dict[str, type[_ChumpyStandIn]] = {}

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        if module_name == "chumpy" or module_name.startswith("chumpy."):
            dotted = f"{module_name}.{global_name}"
            if dotted not in self._chumpy_classes:
                self._chumpy_classes[dotted] = type(
                    "ChumpyStandIn", (_ChumpyStandIn,), {"chumpy_class": dotted}
                )
            return self._chumpy_classes[dotted]
        try:
            return _ALLOWED_GLOBALS[(module_name, global_name)]
        except KeyError:
            raise _RefusedGlobal(f"{module_name}.{global_name}") from None


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"FLAME file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    with path.open("rb") as f:
        try:
            raw = _FlameUnpickler(f).load()
        except _RefusedGlobal as err:
            raise ValueError(
                f"{path}: refusing to load class {err.dotted} from FLAME file: "
                "not a FLAME array type"
            ) from None
        except Exception as err:  # garbage input fails in many ways; all mean "not a pickle"
            raise ValueError(
                f"{path}: not a readable FLAME pickle ({type(err).__name__}: {err})"
            ) from err
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: expected a pickled dict of FLAME arrays, got {type(raw).__name__}"
        )
    return raw


def _chumpy_value(obj: _ChumpyStandIn, key: str, depth: int) -> np.ndarray:
    """Evaluate the chumpy objects a model file can hold: Ch and the pure reorderings."""
    name = obj.chumpy_class
    state = getattr(obj, "state", None)  # absent if the pickle never gave it one
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]  # (dict state, slot state) form
    short = name.rsplit(".", 1)[-1]
    if short == "Ch" and isinstance(state, np.ndarray):
        return state
    if not isinstance(state, dict):
        raise ValueError(f"{key}: {name} has unexpected pickled state {type(state).__name__}")
    if short == "Ch" and "x" in state:
        return _as_array(state["x"], key, depth + 1)
    if short in ("Select", "Reshape", "transpose") and "a" in state:
        inner = _as_array(state["a"], key, depth + 1)
        try:
            if short == "Select":
                picked = inner.ravel()[np.asarray(state["idxs"], dtype=np.int64)]
                shape = state.get("preferred_shape")
                return picked if shape is None else picked.reshape(shape)
            if short == "Reshape":
                return inner.reshape(state["newshape"])
            return np.transpose(inner, state.get("axes"))
        except (IndexError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{key}: cannot evaluate {name}: {err}") from err
    raise ValueError(
        f"{key}: {name} (state keys {sorted(map(str, state))}) is a chumpy expression this "
        "loader does not evaluate; save the model with plain numpy arrays"
    )


def _densify(obj: _SparseStandIn, key: str) -> np.ndarray:
    """Rebuild a dense array from a pickled scipy.sparse CSC/CSR/COO state dict."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise ValueError(f"{key}: sparse matrix has unexpected pickled state")
    shape: Any = state.get("_shape", state.get("shape"))  # `_shape` in every SciPy we know of
    try:
        rows, cols = (int(n) for n in shape)
        data = np.asarray(state["data"], dtype=np.float64).ravel()
        if obj.sparse_format == "coo":
            coords = state.get("coords", (state.get("row"), state.get("col")))
            r, c = (np.asarray(a, dtype=np.int64).ravel() for a in coords)
        else:
            indices = np.asarray(state["indices"], dtype=np.int64).ravel()
            indptr = np.asarray(state["indptr"], dtype=np.int64).ravel()
            major = cols if obj.sparse_format == "csc" else rows
            if len(indptr) != major + 1 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(data):
                raise ValueError("inconsistent indptr")
            outer = np.repeat(np.arange(major), np.diff(indptr))  # column (csc) or row (csr)
            r, c = (indices, outer) if obj.sparse_format == "csc" else (outer, indices)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{key}: unreadable {obj.sparse_format} sparse matrix ({err})") from None
    if not (len(r) == len(c) == len(data)) or rows < 0 or cols < 0:
        raise ValueError(f"{key}: sparse matrix arrays disagree in length")
    if len(r) and (r.min() < 0 or r.max() >= rows or c.min() < 0 or c.max() >= cols):
        raise ValueError(f"{key}: sparse matrix indexes outside its shape {(rows, cols)}")
    dense = np.zeros((rows, cols), dtype=np.float64)
    np.add.at(dense, (r, c), data)  # duplicate entries add up, as in scipy
    return dense


def _as_array(value: Any, key: str, depth: int = 0) -> np.ndarray:
    if depth > MAX_CHUMPY_DEPTH:
        raise ValueError(f"{key}: chumpy objects nested deeper than {MAX_CHUMPY_DEPTH}")
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, _ChumpyStandIn):
        return _chumpy_value(value, key, depth)
    if isinstance(value, _SparseStandIn):
        return _densify(value, key)
    if isinstance(value, (list, tuple, int, float)):
        array = np.asarray(value)
        if array.dtype != object:
            return array
    raise ValueError(f"{key}: expected an array, got {type(value).__name__}")


def _field(raw: dict[str, Any], key: str, path: Path) -> np.ndarray:
    try:
        return _as_array(raw[key], key)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _float_array(raw: dict[str, Any], key: str, path: Path, ndim: int) -> np.ndarray:
    array = _field(raw, key, path)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: {key} must be a {ndim}-D numeric array, got {array.shape}")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{path}: {key} holds non-finite values")
    return out


def _check_shape(path: Path, key: str, shape: tuple[int, ...], want: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{path}: {key} must be {want}, got {shape}")


def _check_string(raw: dict[str, Any], key: str, expected: str, path: Path) -> None:
    # Python 2 wrote these as byte strings; latin-1 decoding gives str, a bytes-mode load bytes.
    value = raw.get(key)
    if isinstance(value, bytes):
        value = value.decode("latin1")
    if value is not None and value != expected:
        raise ValueError(f"{path}: {key} is {value!r}; only {expected!r} models are supported")


def load_flame(
    path: Path,
    *,
    uv_obj: Path | None = None,
    num_shape: int = DEFAULT_NUM_SHAPE,
    num_expr: int = DEFAULT_NUM_EXPR,
) -> HeadModelData:
    """Read a FLAME pickle (2017/2020 with chumpy arrays, or 2023) into `HeadModelData`.

    num_shape / num_expr: identity and expression components to keep (clamped to the file's).
    uv_obj: optional OBJ with the template's texture coordinates (FLAME's head_template.obj);
    without it the UVs come from `cylindrical_face_uvs`.
    Raises FileNotFoundError for a missing file and ValueError, naming the file and the problem,
    for anything that is not a well-formed FLAME model (including disallowed pickle classes).
    """
    path = Path(path)
    if num_shape < 0 or num_expr < 0:
        raise ValueError(f"num_shape and num_expr must be >= 0, got {num_shape}, {num_expr}")
    raw = _unpickle(path)
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ValueError(f"{path}: missing FLAME keys {', '.join(missing)}")
    _check_string(raw, "bs_style", EXPECTED_BS_STYLE, path)
    _check_string(raw, "bs_type", EXPECTED_BS_TYPE, path)

    v_template = _float_array(raw, "v_template", path, 2)  # (V, 3)
    v = v_template.shape[0]
    _check_shape(path, "v_template", v_template.shape, "(V, 3)", v > 0 and v_template.shape[1] == 3)

    kintree = _field(raw, "kintree_table", path)
    ok = kintree.ndim == 2 and kintree.shape[0] == 2 and kintree.shape[1] >= 1
    _check_shape(path, "kintree_table", kintree.shape, "(2, J)", ok)
    j = kintree.shape[1]
    if not np.array_equal(kintree[1].astype(np.int64), np.arange(j)):
        raise ValueError(f"{path}: kintree_table's second row must be the joint ids 0..{j - 1}")
    parents = kintree[0].astype(np.int64)  # (J,); the root's entry is a sentinel such as 2**32-1
    parents[0] = -1

    dirs = _float_array(raw, "shapedirs", path, 3)  # (V, 3, 300 + E)
    _check_shape(path, "shapedirs", dirs.shape, f"({v}, 3, K)", dirs.shape[:2] == (v, 3))
    split = min(FLAME_SHAPE_COMPONENTS, dirs.shape[2])
    shapedirs = np.ascontiguousarray(dirs[:, :, : min(num_shape, split)])  # (V, 3, S)
    exprdirs = np.ascontiguousarray(dirs[:, :, split : split + num_expr])  # (V, 3, E)

    posedirs_vcp = _float_array(raw, "posedirs", path, 3)  # (V, 3, P)
    p = POSE_FEATURES_PER_JOINT * (j - 1)
    _check_shape(
        path, "posedirs", posedirs_vcp.shape, f"({v}, 3, {p})", posedirs_vcp.shape == (v, 3, p)
    )
    posedirs = np.ascontiguousarray(posedirs_vcp.reshape(v * 3, p).T)  # (P, V * 3), index 3 v + c

    j_regressor = _float_array(raw, "J_regressor", path, 2)  # (J, V)
    _check_shape(path, "J_regressor", j_regressor.shape, f"({j}, {v})", j_regressor.shape == (j, v))
    lbs_weights = _float_array(raw, "weights", path, 2)  # (V, J)
    _check_shape(path, "weights", lbs_weights.shape, f"({v}, {j})", lbs_weights.shape == (v, j))

    faces_raw = _field(raw, "f", path)
    ok = (
        faces_raw.ndim == 2
        and faces_raw.shape[1] == 3
        and np.issubdtype(faces_raw.dtype, np.integer)
    )
    _check_shape(path, "f", faces_raw.shape, "(F, 3) integers", ok)
    faces = faces_raw.astype(np.int64)  # (F, 3)
    if faces.size == 0 or faces.min() < 0 or faces.max() >= v:
        raise ValueError(f"{path}: f must index vertices 0..{v - 1}")

    if uv_obj is not None:
        face_uvs = obj_face_uvs(Path(uv_obj), faces, v)
    else:
        face_uvs = cylindrical_face_uvs(v_template, faces)

    e = exprdirs.shape[2]
    joint_names = (
        FLAME_JOINT_NAMES if j == len(FLAME_JOINT_NAMES) else tuple(f"joint_{i}" for i in range(j))
    )
    return HeadModelData(
        v_template=v_template,
        shapedirs=shapedirs,
        exprdirs=exprdirs,
        posedirs=posedirs,
        j_regressor=j_regressor,
        lbs_weights=lbs_weights,
        parents=parents,
        faces=faces,
        face_uvs=face_uvs,
        expression_names=tuple(f"exp_{i:03d}" for i in range(e)),
        expression_inert=(False,) * e,
        joint_names=joint_names,
        units=FLAME_UNITS,
        source=path.name,
    )


def cylindrical_face_uvs(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Fallback per-corner UVs (F, 3, 2) in [0, 1]: a cylinder about +y, v down, seam at the back.

    vertices (V, 3) with +y up and +z forward (FLAME's frame); faces (F, 3) int.
    u = 0.5 + atan2(x, z) / 2 pi about the bounding-box centre, v = (y_max - y) / height.
    Triangles straddling the seam (corners near u = 0 and u = 1) have their minority corners
    snapped onto the seam edge of the majority side, so no triangle stretches across the map.
    """
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0  # (3,)
    rel = vertices - centre  # (V, 3)
    u = 0.5 + np.arctan2(rel[:, 0], rel[:, 2]) / (2.0 * np.pi)  # (V,)
    height = max(float(np.ptp(vertices[:, 1])), 1e-12)
    v = (vertices[:, 1].max() - vertices[:, 1]) / height  # (V,)
    corner_u = u[faces]  # (F, 3)
    crosses = (corner_u.max(axis=1) - corner_u.min(axis=1) > SEAM_SPAN)[:, None]  # (F, 1)
    high_side = ((corner_u >= 0.5).sum(axis=1) >= 2)[:, None]  # (F, 1)
    corner_u = np.where(crosses & high_side & (corner_u < 0.5), 1.0, corner_u)
    corner_u = np.where(crosses & ~high_side & (corner_u >= 0.5), 0.0, corner_u)
    uvs = np.stack([corner_u, v[faces]], axis=-1)  # (F, 3, 2)
    return np.clip(uvs, 0.0, 1.0).astype(np.float32)


def _obj_index(token: str, count: int, what: str) -> int:
    index = int(token)
    index = index - 1 if index > 0 else count + index  # OBJ is 1-based; negatives count back
    if not 0 <= index < count:
        raise ValueError(f"{what} index {token} outside 1..{count}")
    return index


def obj_face_uvs(obj_path: Path, faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Per-corner UVs (F, 3, 2) for `faces` from an OBJ's `vt` and `f v/vt ...` lines, v down.

    The OBJ's triangles are matched to `faces` by vertex indices, so their order and corner
    rotation may differ; every face must be present. If the OBJ lists vertices, their count must
    equal `num_vertices`.
    """
    if not obj_path.is_file():
        raise FileNotFoundError(f"UV OBJ file not found: {obj_path}")
    num_v = 0
    texcoords: list[tuple[float, float]] = []
    tris: dict[tuple[int, ...], tuple[tuple[int, int], ...]] = {}  # sorted verts -> (v, vt)s
    face_lines: list[tuple[int, list[str]]] = []
    try:
        with obj_path.open(encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "v":
                    num_v += 1
                elif parts[0] == "vt":
                    texcoords.append((float(parts[1]), float(parts[2])))
                elif parts[0] == "f":
                    face_lines.append((line_no, parts[1:]))
    except (IndexError, ValueError) as err:
        raise ValueError(f"{obj_path}: malformed OBJ line ({err})") from None
    if num_v and num_v != num_vertices:
        raise ValueError(f"{obj_path}: has {num_v} vertices, the FLAME model {num_vertices}")
    # Indices are resolved after reading because OBJ negative indices are relative to the
    # elements read so far; FLAME's template lists all v and vt before the faces.
    for line_no, corners in face_lines:
        where = f"{obj_path}:{line_no}"
        if len(corners) != 3:
            raise ValueError(f"{where}: only triangles are supported, got {len(corners)} corners")
        pairs = []
        for corner in corners:
            fields = corner.split("/")
            if len(fields) < 2 or not fields[1]:
                raise ValueError(f"{where}: face corner {corner!r} has no texture coordinate")
            try:
                vi = _obj_index(fields[0], num_vertices, "vertex")
                ti = _obj_index(fields[1], len(texcoords), "texture")
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            pairs.append((vi, ti))
        tris[tuple(sorted(vi for vi, _ in pairs))] = tuple(pairs)
    uv_table = np.asarray(texcoords, dtype=np.float32).reshape(-1, 2)  # (T, 2)
    corner_vt = np.empty(faces.shape, dtype=np.int64)  # (F, 3)
    for fi, face in enumerate(faces.tolist()):
        match = tris.get(tuple(sorted(face)))
        if match is None:
            raise ValueError(f"{obj_path}: has no triangle with vertices {face} (face {fi})")
        lookup = dict(match)
        corner_vt[fi] = [lookup[vi] for vi in face]
    uvs = uv_table[corner_vt]  # (F, 3, 2)
    uvs[..., 1] = 1.0 - uvs[..., 1]  # OBJ's v points up; ours points down
    return np.ascontiguousarray(uvs, dtype=np.float32)
