"""Face regions on the canonical mesh: where each ARKit blendshape may move, left/right sides and
mirror symmetry. Used by the expression-basis fit; pure functions of canonical vertices (cm,
+x = the subject's left, +y up)."""

from __future__ import annotations

import numpy as np

# MediaPipe's published FACE_OVAL landmark ids: the silhouette, which slides as the head turns.
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
EYE_CORNERS_RIGHT = (33, 133)  # subject's right eye (canonical -x)
EYE_CORNERS_LEFT = (362, 263)  # subject's left eye (canonical +x)
SIDE_SOFTNESS_CM = 0.6  # width of the left/right hand-over across the midline
REGION_SOFTNESS_CM = 0.8  # width of a region's soft edge
BROW_BAND_CM = 4.0  # how far above the eye centres the brow shapes reach
MASK_FLOOR = 0.05  # below this soft-region weight a shape is held at exactly zero
SIDED = (
    "brow", "cheekSquint", "eyeBlink", "eyeSquint", "eyeWide", "mouthDimple", "mouthFrown",
    "mouthLowerDown", "mouthPress", "mouthSmile", "mouthStretch", "mouthUpperUp", "noseSneer",
)  # fmt: skip


def _soft_below(value: np.ndarray, edge: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp((value - edge) / (REGION_SOFTNESS_CM / 4)))


def side_weight(x: np.ndarray, side: str) -> np.ndarray:
    """Soft membership of the subject's `side` ("Left" = canonical +x)."""
    s = 1.0 / (1.0 + np.exp(-x / (SIDE_SOFTNESS_CM / 4)))
    return s if side == "Left" else 1.0 - s


def region_weights(name: str, v: np.ndarray) -> np.ndarray:
    """(V,) soft region in [0, 1] that blendshape `name` may move, from canonical vertices (V, 3).

    Regions are drawn generously (a shape decays inside them through the smoothness penalty) but
    keep, e.g., jawOpen off the temples and blinks off the chin."""
    x, y = v[:, 0], v[:, 1]
    eye_r = v[list(EYE_CORNERS_RIGHT)].mean(axis=0)
    eye_l = v[list(EYE_CORNERS_LEFT)].mean(axis=0)
    eye_y = 0.5 * (eye_r[1] + eye_l[1])
    dist_eye = np.minimum(
        np.linalg.norm(v[:, :2] - eye_r[:2], axis=1), np.linalg.norm(v[:, :2] - eye_l[:2], axis=1)
    )
    nose_base_y = v[2, 1]  # landmark 2: below the nose tip
    if name.startswith(("jaw", "mouth")):
        w = _soft_below(y, nose_base_y + 0.5)
    elif name.startswith("eye"):
        w = _soft_below(dist_eye, 2.6)
    elif name.startswith("brow"):
        # The band from the upper lids to a few cm above the brows; not the hairline, whose
        # outline points only slide with head pitch.
        w = _soft_below(-y, -(eye_y - 0.3)) * _soft_below(y, eye_y + BROW_BAND_CM)
        if name == "browInnerUp":
            w = w * _soft_below(np.abs(x), 4.0)
        elif name.startswith("browOuterUp"):
            w = w * _soft_below(-np.abs(x), -1.5)
    elif name == "cheekPuff":
        w = _soft_below(y, eye_y - 1.0) * _soft_below(-np.abs(x), -2.0)
    elif name.startswith("cheekSquint"):
        w = (
            _soft_below(y, eye_y + 0.5)
            * _soft_below(-y, 3.5 - eye_y)
            * _soft_below(-np.abs(x), -1.5)
        )
    elif name.startswith("noseSneer"):
        w = (
            _soft_below(np.abs(x), 3.5)
            * _soft_below(y, eye_y)
            * _soft_below(-y, -(nose_base_y - 1.5))
        )
    else:
        raise ValueError(f"no face region is defined for blendshape {name!r}")
    base = (
        name[: -len("Left")]
        if name.endswith("Left")
        else name[: -len("Right")]
        if name.endswith("Right")
        else name
    )
    if base != name and base.startswith(SIDED):
        w = w * side_weight(x, "Left" if name.endswith("Left") else "Right")
    return w


def report_regions(v: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint vertex sets for per-region error reports: (V,) bool each."""
    oval = np.zeros(v.shape[0], dtype=bool)
    oval[list(FACE_OVAL)] = True
    mouth = region_weights("jawOpen", v) > 0.5
    eyes = region_weights("eyeBlinkLeft", v) + region_weights("eyeBlinkRight", v) > 0.5
    brows = (region_weights("browInnerUp", v) > 0.5) & ~eyes
    nose = (
        (region_weights("noseSneerLeft", v) + region_weights("noseSneerRight", v) > 0.5)
        & ~eyes
        & ~mouth
    )
    cheeks = ~(oval | mouth | eyes | brows | nose)
    return {
        "mouth_jaw": mouth & ~oval,
        "eyes": eyes & ~oval,
        "brows": brows & ~oval,
        "nose": nose & ~oval,
        "cheeks": cheeks,
        "outline": oval,
    }


def mirror_map(vertices: np.ndarray) -> np.ndarray:
    """(V,) index of each vertex's mirror image across the x = 0 plane (the canonical mesh is
    left/right symmetric), found as the nearest vertex to (-x, y, z)."""
    flipped = vertices * np.array([-1.0, 1.0, 1.0])
    d = np.linalg.norm(vertices[None, :, :] - flipped[:, None, :], axis=-1)  # (V, V)
    return d.argmin(axis=1)


def symmetrise(shape: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Average a (V, 3) displacement field with its mirror image: head roll and yaw leak into a
    fit as left/right-asymmetric motion, which a symmetric expression cannot contain."""
    return 0.5 * (shape + shape[mirror] * np.array([-1.0, 1.0, 1.0]))


def is_sided(name: str) -> bool:
    return name.endswith(("Left", "Right"))
