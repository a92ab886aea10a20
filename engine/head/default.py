"""The built-in head: MediaPipe's canonical face mesh with a small skeleton and the expression
basis learned from a real face video (`engine.training.basis`, stored in
`static/default_expression_basis.npz`). Needs no licensed file.

Skeleton (FLAME's structure where it applies to a face-only mesh): a root, a neck that carries
the whole face, and a jaw hinged between the ears that carries the chin and lower lip. There are
no eyeballs in the 468-vertex mesh, so there are no eye joints. Pose correctives are zero: the
learned blendshapes already hold what the clip showed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.head.canonical_mesh import CanonicalMesh, load_canonical_mesh
from engine.head.data import HeadModelData

BASIS_FILE = Path(__file__).resolve().parents[2] / "static" / "default_expression_basis.npz"

# MediaPipe canonical-mesh landmark ids (the face mesh's published numbering).
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
CHIN = 152
EAR_RIGHT, EAR_LEFT = 234, 454  # outline points at the tragus, the subject's right / left
JAW_SIDE_RIGHT, JAW_SIDE_LEFT = 93, 323  # outline points where the jaw meets the cheek

# The inner lip contours (MediaPipe's FACEMESH_LIPS), mouth corner to mouth corner. The canonical
# mesh closes the mouth with a strip of triangles between them whose UVs are a sliver of the lip
# line: opened by the jaw, it would show the lip texture stretched. Its corners get a texture
# region of their own instead (MOUTH_UV_*: the atlas's empty band above the forehead), so that the
# mouth interior (teeth, tongue, dark) is learned where it shows, and the generator sees from the
# features where the mouth is open.
LIP_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_UV_U = (0.1, 0.9)  # u of the two mouth corners
MOUTH_UV_V = (0.005, 0.1)  # v of the upper and the lower inner lip (the atlas starts at 0.107)

JAW_OPEN_RAD = 0.45  # jaw rotation at jawOpen = 1 (26 degrees: the lips part by about 3 cm)
JAW_BLEND_CM = 0.5  # width of the soft band between jaw-carried and skull-carried vertices
JOINT_NAMES = ("global", "neck", "jaw")

# The 52 ARKit blendshape names: the default head's expression names, in this order. MediaPipe
# scores 51 of them (not tongueOut) plus its own `_neutral`, which is not an expression.
ARKIT_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
)  # fmt: skip


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def jaw_weights(vertices: np.ndarray) -> np.ndarray:
    """(V, 3) canonical vertices -> (V,) jaw skinning weight in [0, 1].

    The boundary runs between the lips in the middle and rises towards the jaw angle at the sides
    (a parabola in |x|), so the chin, lower lip and lower cheeks follow the jaw.
    """
    y_mid = 0.5 * (vertices[UPPER_LIP_INNER, 1] + vertices[LOWER_LIP_INNER, 1])
    y_side = vertices[JAW_SIDE_LEFT, 1]
    half_width = abs(vertices[JAW_SIDE_LEFT, 0])
    rel = np.clip(np.abs(vertices[:, 0]) / half_width, 0.0, 1.0)
    boundary = y_mid + (y_side - y_mid) * rel**2  # (V,)
    return _smoothstep((boundary - vertices[:, 1]) / JAW_BLEND_CM + 0.5)


def skeleton(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint regressor (3, V), skinning weights (V, 3) and parents (3,) for the canonical mesh."""
    v = vertices.shape[0]
    regressor = np.zeros((3, v), dtype=np.float32)
    regressor[0, :] = 1.0 / v  # root: the mesh centroid
    regressor[1, [CHIN, EAR_RIGHT, EAR_LEFT]] = 1.0 / 3.0  # neck pivot: behind and below the face
    regressor[2, [EAR_RIGHT, EAR_LEFT]] = 0.5  # jaw hinge axis passes between the ears
    jaw = jaw_weights(vertices)
    weights = np.zeros((v, 3), dtype=np.float32)
    weights[:, 1] = 1.0 - jaw
    weights[:, 2] = jaw
    return regressor, weights, np.array([-1, 0, 1], dtype=np.int64)


def load_basis(
    path: Path = BASIS_FILE,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[bool, ...]]:
    """Read the learned basis: identity offset (V, 3), exprdirs (V, 3, E), names, inert flags."""
    try:
        with np.load(path, allow_pickle=False) as z:
            offset = z["identity_offset"].astype(np.float32)
            exprdirs = z["exprdirs"].astype(np.float32)
            names = tuple(str(n) for n in z["names"])
            inert = tuple(bool(b) for b in z["inert"])
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"expression basis {path} is missing: run `python -m engine basis --sample`"
        ) from exc
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not an expression basis file: {exc}") from exc
    return offset, exprdirs, names, inert


def mouth_faces(faces: np.ndarray) -> np.ndarray:
    """(F, 3) triangles -> indices of those whose corners all lie on the inner lip contours."""
    loop = set(LIP_INNER_UPPER) | set(LIP_INNER_LOWER)
    return np.flatnonzero([set(tri.tolist()) <= loop for tri in faces])


def mouth_uvs(mesh: CanonicalMesh) -> np.ndarray:
    """(F, 3, 2) corner UVs of the mesh, the mouth strip's moved to its own region: u by the
    corner's canonical u (spread over MOUTH_UV_U), v by whether it is on the upper or lower lip."""
    uvs = mesh.uvs[mesh.faces].copy()  # (F, 3, 2)
    corners = mesh.uvs[[LIP_INNER_UPPER[0], LIP_INNER_UPPER[-1]], 0]  # (2,) canonical u
    upper, lower = set(LIP_INNER_UPPER[1:-1]), set(LIP_INNER_LOWER[1:-1])
    for f in mouth_faces(mesh.faces):
        for c, vid in enumerate(mesh.faces[f].tolist()):
            s = (mesh.uvs[vid, 0] - corners[0]) / (corners[1] - corners[0])  # 0..1 across
            u = MOUTH_UV_U[0] + s * (MOUTH_UV_U[1] - MOUTH_UV_U[0])
            v = MOUTH_UV_V[0] if vid in upper else MOUTH_UV_V[1] if vid in lower else None
            uvs[f, c] = (u, sum(MOUTH_UV_V) / 2 if v is None else v)
    return uvs


def build_default_head(
    basis_path: Path | None = BASIS_FILE, mesh: CanonicalMesh | None = None
) -> HeadModelData:
    """The default head. `basis_path=None` gives the bare canonical mesh with inert expressions
    (used while learning the basis itself)."""
    mesh = mesh or load_canonical_mesh()
    v = mesh.vertices.shape[0]
    if basis_path is None:
        offset = np.zeros((v, 3), dtype=np.float32)
        names: tuple[str, ...] = ARKIT_NAMES
        exprdirs = np.zeros((v, 3, len(names)), dtype=np.float32)
        inert = (True,) * len(names)
    else:
        offset, exprdirs, names, inert = load_basis(basis_path)
        if offset.shape != (v, 3) or exprdirs.shape[:2] != (v, 3):
            raise ValueError(
                f"{basis_path}: basis is for a mesh of {offset.shape[0]} vertices, not {v}"
            )
    template = mesh.vertices + offset
    regressor, weights, parents = skeleton(template)
    # jawOpen is rigged, not only learned: it turns the jaw joint, which extrapolates the way a
    # jaw does, where a clip that never opens the mouth wide could not teach a blendshape.
    jaw_rig = np.zeros((len(names), 3), dtype=np.float32)
    jaw_rig[names.index("jawOpen"), 0] = JAW_OPEN_RAD
    inert = tuple(flag and name != "jawOpen" for name, flag in zip(names, inert, strict=True))
    return HeadModelData(
        v_template=template.astype(np.float32),
        shapedirs=np.zeros((v, 3, 0), dtype=np.float32),
        exprdirs=exprdirs,
        posedirs=np.zeros((9 * (len(parents) - 1), v * 3), dtype=np.float32),
        j_regressor=regressor,
        lbs_weights=weights,
        parents=parents,
        faces=mesh.faces,
        face_uvs=mouth_uvs(mesh),
        expression_names=names,
        expression_inert=inert,
        joint_names=JOINT_NAMES,
        units="cm",
        source="default" if basis_path is None else f"default ({basis_path.name})",
        jaw_from_expression=jaw_rig,
    )
