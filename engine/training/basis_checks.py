"""Checks and a picture of a learned expression basis (engine.training.basis): which eye
MediaPipe's eyeBlinkLeft closes, and a sheet of the main shapes as the default head makes them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from engine.head.model import HeadModel

LID_PAIRS = {"Left": (386, 374), "Right": (159, 145)}  # upper, lower lid: subject's left is +x


def blink_side_check(
    observed: np.ndarray, scores: np.ndarray, names: tuple[str, ...]
) -> dict[str, float]:
    """Which eye does MediaPipe's eyeBlinkLeft close? Correlate the left-minus-right score with the
    +x-minus--x lid gap: positive means ARKit 'Left' is canonical +x, as the regions assume."""
    gap = {
        side: np.linalg.norm(observed[:, a] - observed[:, b], axis=-1)
        for side, (a, b) in LID_PAIRS.items()
    }
    diff_score = scores[:, names.index("eyeBlinkLeft")] - scores[:, names.index("eyeBlinkRight")]
    diff_gap = gap["Right"] - gap["Left"]  # a closing left eye shrinks the +x gap
    if diff_score.std() == 0 or diff_gap.std() == 0:
        return {}
    return {
        "corr_left_score_with_plus_x_closing": round(
            float(np.corrcoef(diff_score, diff_gap)[0, 1]), 3
        )
    }


SHEET_SHAPES: tuple[tuple[str, dict[str, float]], ...] = (
    ("neutral", {}),
    ("jawOpen 0.5", {"jawOpen": 0.5}),
    ("smile L+R", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}),
    ("mouthSmileLeft", {"mouthSmileLeft": 1.0}),
    ("blink L+R", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
    ("eyeBlinkLeft", {"eyeBlinkLeft": 1.0}),
    ("browInnerUp", {"browInnerUp": 1.0}),
    ("browDownLeft", {"browDownLeft": 1.0}),
)


def render_sheet(head: HeadModel, out: Path, title: str) -> None:
    """Front views of the main shapes as the default head makes them (blendshapes and jaw rig),
    triangles coloured by how far they moved from neutral (cm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    faces = head.data.faces
    names = head.expression_names
    expr = torch.zeros(len(SHEET_SHAPES), len(names))
    for row, (_, weights) in enumerate(SHEET_SHAPES):
        for name, w in weights.items():
            expr[row, names.index(name)] = w
    with torch.inference_mode():
        c = dataclasses.replace(head.neutral_controls(batch=len(SHEET_SHAPES)), expression=expr)
        verts_all = head(c).vertices.numpy()
    base = verts_all[0]
    fig, axes = plt.subplots(2, 4, figsize=(16, 9.5))
    for ax, (label, weights), verts in zip(axes.ravel(), SHEET_SHAPES, verts_all, strict=True):
        moved = np.linalg.norm(verts - base, axis=1)[faces].mean(axis=1)  # (F,)
        order = np.argsort(verts[faces][:, :, 2].mean(axis=1))  # paint back to front
        polys = PolyCollection(
            verts[faces][order][:, :, :2],
            array=moved[order],
            cmap="viridis",
            edgecolors="k",
            linewidths=0.15,
        )
        polys.set_clim(0.0, 1.5)
        ax.add_collection(polys)
        ax.set_xlim(-9, 9)
        ax.set_ylim(-12, 10)
        ax.set_aspect("equal")
        ax.axis("off")
        inert = any(head.data.expression_inert[names.index(n)] for n in weights)
        ax.set_title(label + (" (inert)" if inert else ""))
    fig.colorbar(polys, ax=axes, shrink=0.6, label="displacement from neutral, cm")
    fig.suptitle(title)
    fig.savefig(out, dpi=80)
    plt.close(fig)
