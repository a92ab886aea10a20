"""The arrays that define a FLAME-format parametric head, independent of where they came from.

Both sources fill the same frozen dataclass: a real FLAME file (`engine.head.flame_file`) and the
built-in default made from MediaPipe's canonical mesh plus a learned expression basis
(`engine.head.default`). `engine.head.model` evaluates it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeadModelData:
    """V vertices, F triangles, J joints, S shape and E expression components (all numpy).

    v_template      (V, 3) float32  rest-pose vertices, in `units`
    shapedirs       (V, 3, S) float32  identity blendshapes (S may be 0)
    exprdirs        (V, 3, E) float32  expression blendshapes, one per expression name
    posedirs        (9 * (J - 1), V * 3) float32  pose correctives, driven by (R_j - I) of the
                    non-root joints as in FLAME (may be all zero)
    j_regressor     (J, V) float32  rest joints = j_regressor @ shaped vertices
    lbs_weights     (V, J) float32  skinning weights, rows sum to 1
    parents         (J,) int64  kinematic tree, parents[0] == -1
    faces           (F, 3) int64  triangles, counter-clockwise seen from outside
    face_uvs        (F, 3, 2) float32  UV of each triangle corner in [0, 1], v pointing down
                    (image convention); per corner so that UV seams are allowed
    expression_names  E names, in the order of exprdirs' last axis
    expression_inert  E flags: True where the data could not teach that expression, so its
                    blendshape is zero and a client should grey the control out
    joint_names     J names (FLAME: global, neck, jaw, eye_left, eye_right)
    units           length unit of the vertices: "cm" or "m"
    source          where the arrays came from (file name or "default")
    jaw_from_expression  (E, 3) float32 or None: axis-angle added to the jaw joint per unit of each
                    expression (the default head opens its jaw with jawOpen this way, as a rig)
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    lbs_weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray
    face_uvs: np.ndarray
    expression_names: tuple[str, ...]
    expression_inert: tuple[bool, ...]
    joint_names: tuple[str, ...]
    units: str
    source: str
    jaw_from_expression: np.ndarray | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_joints(self) -> int:
        return int(self.parents.shape[0])


def validate(d: HeadModelData) -> None:
    """Check every shape against the others; raise ValueError naming the first mismatch."""
    v = d.v_template.shape[0] if d.v_template.ndim == 2 else -1
    j = d.parents.shape[0] if d.parents.ndim == 1 else -1
    f = d.faces.shape[0] if d.faces.ndim == 2 else -1
    e = len(d.expression_names)
    checks: list[tuple[bool, str]] = [
        (
            d.v_template.shape == (v, 3) and v > 0,
            f"v_template must be (V, 3), got {d.v_template.shape}",
        ),
        (
            d.shapedirs.ndim == 3 and d.shapedirs.shape[:2] == (v, 3),
            f"shapedirs must be ({v}, 3, S), got {d.shapedirs.shape}",
        ),
        (d.exprdirs.shape == (v, 3, e), f"exprdirs must be ({v}, 3, {e}), got {d.exprdirs.shape}"),
        (j >= 1, f"parents must be (J,) with J >= 1, got {d.parents.shape}"),
        (
            d.posedirs.shape == (9 * (j - 1), v * 3),
            f"posedirs must be ({9 * (j - 1)}, {v * 3}), got {d.posedirs.shape}",
        ),
        (
            d.j_regressor.shape == (j, v),
            f"j_regressor must be ({j}, {v}), got {d.j_regressor.shape}",
        ),
        (
            d.lbs_weights.shape == (v, j),
            f"lbs_weights must be ({v}, {j}), got {d.lbs_weights.shape}",
        ),
        (f > 0 and d.faces.shape == (f, 3), f"faces must be (F, 3), got {d.faces.shape}"),
        (d.face_uvs.shape == (f, 3, 2), f"face_uvs must be ({f}, 3, 2), got {d.face_uvs.shape}"),
        (
            len(d.expression_inert) == e,
            f"expression_inert has {len(d.expression_inert)} flags for {e} names",
        ),
        (len(set(d.expression_names)) == e, "expression_names must be unique"),
        (len(d.joint_names) == j, f"joint_names has {len(d.joint_names)} names for {j} joints"),
        (d.units in ("cm", "m"), f"units must be 'cm' or 'm', got {d.units!r}"),
        (
            d.jaw_from_expression is None
            or (d.jaw_from_expression.shape == (e, 3) and "jaw" in d.joint_names),
            f"jaw_from_expression must be ({e}, 3) on a model with a jaw joint",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"head model {d.source!r}: {message}")
    if int(d.parents[0]) != -1 or any(not 0 <= int(p) < i for i, p in enumerate(d.parents[1:], 1)):
        raise ValueError(f"head model {d.source!r}: parents must start with -1 and point backwards")
    if int(d.faces.min()) < 0 or int(d.faces.max()) >= v:
        raise ValueError(f"head model {d.source!r}: faces index vertices outside 0..{v - 1}")
    if not np.allclose(d.lbs_weights.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(f"head model {d.source!r}: lbs_weights rows must sum to 1")
