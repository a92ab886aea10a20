"""Learn the default head's expression basis (52 ARKit blendshapes) from a captured face video.

What the capture gives per frame: 468 face landmarks, MediaPipe's 52 blendshape scores, and its
perspective-correct head pose. What we want: one displacement field per ARKit name on the canonical
mesh, so that `template + sum_k B_k * score_k` reproduces the face. A plain ridge regression fits
the training frames but leaks head pose and outline sliding into expressions (../shared/MEASURED.md),
because the scores of one clip are strongly correlated. The fit here differs from it in five ways:

1. Alignment: landmarks are lifted into the canonical frame with MediaPipe's own perspective head
   pose (not a flat similarity Procrustes), then refined by a rigid Procrustes on the points MediaPipe
   itself treats as rigid (its procrustes weights).
2. The face-outline landmarks, which slide along the silhouette as the head turns, get no data term.
3. Each blendshape may move only its region of the face (soft masks from the canonical geometry),
   with a mesh-Laplacian smoothness penalty, solved jointly as one sparse linear system.
4. Scores that are strongly correlated in the clip (left/right pairs) are tied: one shape is learned
   for their mean and split between them by their regions (a partition of unity), so the data does not
   have to tell apart what it never shows apart.
5. Blendshapes the clip does not exercise (score std below a threshold), gaze (the mesh has no
   eyeballs), and tongueOut (never scored) stay inert: zero shape, declared so the page can grey them.

Hyper-parameters (ridge and smoothness weights) are chosen on a validation block taken from the end
of the training frames; the test block (the clip's last frames) is never used for fitting or choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.canonical_mesh import CanonicalMesh, load_canonical_mesh
from engine.head.default import (
    ARKIT_NAMES,
    BASIS_FILE,
    JAW_OPEN_RAD,
    build_default_head,
)
from engine.head.model import HeadModel
from engine.head.regions import (
    MASK_FLOOR,
    mirror_map,
    region_weights,
    report_regions,
)
from engine.training.alignment import ALIGNMENTS, align, skull_weights
from engine.training.basis_checks import blink_side_check, render_sheet
from engine.training.basis_solve import (
    TiePlan,
    mesh_laplacian,
    plan_ties,
    solve_basis,
    split_tied,
    tied_scores,
)

SAMPLE_CAPTURE_DIR = Path("data/sample_capture")  # git-ignored: frames are not committed
FACE_WIDTH_PAIR = (234, 454)  # tragus to tragus: the width that errors are quoted against

MAX_DISPLACEMENT_CM = 3.0  # how far a blendshape can move a point of the face at weight 1 (the
# jaw's larger travel belongs to the jaw rig, not to the jawOpen blendshape)
TEST_FRACTION = 0.2  # the clip's last 20% of frames: held out, as in the probe
VALIDATION_FRACTION = 0.1  # the end of the training part, for choosing hyper-parameters
RIDGE_GRID = (1e-4, 1e-3, 1e-2)  # per-frame ridge weights tried
SMOOTH_GRID = (1e-4, 1e-3, 1e-2)  # per-frame Laplacian weights tried


# --------------------------------------------------------------------------------------------
# Evaluation


def vertex_errors(pred: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(N, V, 3) each -> (N, V) Euclidean distances."""
    return np.linalg.norm(pred - observed, axis=-1)


def region_report(
    errors: np.ndarray, regions: dict[str, np.ndarray], face_width: float
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, sel in {"all_inner": ~regions["outline"], **regions}.items():
        e = float(errors[:, sel].mean())
        out[name] = {"cm": round(e, 4), "percent_face_width": round(100 * e / face_width, 3)}
    return out


@dataclass(frozen=True)
class Basis:
    """identity_offset (V, 3) cm; exprdirs (V, 3, E) cm per unit score, E = len(names);
    names the 52 ARKit names; inert (E,) bool; inert_reason name -> why."""

    identity_offset: np.ndarray
    exprdirs: np.ndarray
    names: tuple[str, ...]
    inert: tuple[bool, ...]
    inert_reason: dict[str, str]
    tied: tuple[tuple[str, ...], ...]


def assemble(
    intercept: np.ndarray,
    shapes: np.ndarray,
    plan: TiePlan,
    masks: dict[str, np.ndarray],
    template: np.ndarray,
) -> Basis:
    per_name = split_tied(shapes, plan, masks, mirror_map(template))
    v = intercept.shape[0]
    exprdirs = np.zeros((v, 3, len(ARKIT_NAMES)), dtype=np.float32)
    for k, name in enumerate(ARKIT_NAMES):
        if name in per_name:
            exprdirs[:, :, k] = per_name[name]
    reasons = dict(plan.inert)
    reasons.setdefault("tongueOut", "not scored by MediaPipe's blendshape model")
    if "jawOpen" in reasons:
        reasons["jawOpen"] += " (the blendshape only: the jaw rig still opens the jaw)"
    inert = tuple(name not in per_name for name in ARKIT_NAMES)
    for name, is_inert in zip(ARKIT_NAMES, inert, strict=True):
        if is_inert:
            reasons.setdefault(name, "no data")
    return Basis(
        identity_offset=intercept.astype(np.float32),
        exprdirs=exprdirs,
        names=ARKIT_NAMES,
        inert=inert,
        inert_reason={k: reasons[k] for k in ARKIT_NAMES if k in reasons},
        tied=tuple(tuple(plan.active[i] for i in g) for g in plan.columns if len(g) > 1),
    )


def jaw_rig_displacement(template: np.ndarray, jaw_open: np.ndarray) -> np.ndarray:
    """(N, V, 3) motion that the default head's jaw rig adds for (N,) jawOpen scores: the fit
    learns the rest, so that rig and blendshapes never count the same motion twice."""
    head = HeadModel(build_default_head(basis_path=None))
    with torch.inference_mode():
        c = head.neutral_controls(batch=len(jaw_open))
        jaw = torch.zeros(len(jaw_open), 3)
        jaw[:, 0] = torch.as_tensor(jaw_open, dtype=torch.float32) * JAW_OPEN_RAD
        moved = head(dataclasses.replace(c, jaw=jaw)).vertices.double().numpy()
    return moved - template


def predict(
    basis: Basis,
    scores: np.ndarray,
    score_names: tuple[str, ...],
    template: np.ndarray,
    rig: np.ndarray,
) -> np.ndarray:
    """(N, K) captured scores over score_names and the (N, V, 3) jaw-rig motion -> (N, V, 3)
    canonical-frame mesh."""
    full = np.zeros((scores.shape[0], len(basis.names)))
    for k, name in enumerate(basis.names):
        if name in score_names:
            full[:, k] = scores[:, score_names.index(name)]
    shapes = np.einsum("vce,ne->nvc", basis.exprdirs, full)
    return template + basis.identity_offset + shapes + rig


def plain_ridge(
    residuals: np.ndarray, scores: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """The probe's baseline: every score, every vertex, no regions, no smoothness."""
    n = residuals.shape[0]
    design = np.concatenate([np.ones((n, 1)), scores], axis=1)
    reg = ridge * n * np.eye(design.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.solve(design.T @ design + reg, design.T @ residuals.reshape(n, -1))
    return coef[0].reshape(-1, 3), coef[1:].reshape(scores.shape[1], -1, 3).transpose(1, 2, 0)


def implausible_shapes(basis: Basis, scores: np.ndarray, names: tuple[str, ...]) -> dict[str, str]:
    """Active shapes that move some point further at weight 1 than a face can, with the reason.

    Such a shape comes from a score that stays small in the clip: the fit is extrapolated many
    times over and is dominated by noise, so it is held inert rather than shipped."""
    out: dict[str, str] = {}
    for k, name in enumerate(basis.names):
        if basis.inert[k]:
            continue
        reach = float(np.linalg.norm(basis.exprdirs[:, :, k], axis=1).max())
        bound = MAX_DISPLACEMENT_CM
        if reach > bound:
            p99 = float(np.percentile(scores[:, names.index(name)], 99))
            out[name] = (
                f"fitted shape moves {reach:.1f} cm at weight 1 (bound {bound} cm): the clip's "
                f"scores (99th percentile {p99:.2f}) are too small to extrapolate from"
            )
    return out


@dataclass(frozen=True)
class FitResult:
    basis: Basis
    report: dict[str, object]


def fit(
    landmarks_px: np.ndarray,
    landmarks_world: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    scores: np.ndarray,
    score_names: tuple[str, ...],
    mesh: CanonicalMesh,
    alignment: str = "rigid-points",
) -> FitResult:
    """The whole fit with its held-out report. Arrays are per captured frame, in time order."""
    n = landmarks_px.shape[0]
    if n < 20:
        raise ValueError(f"need at least 20 captured frames to learn a basis, got {n}")
    template = mesh.vertices.astype(np.float64)
    v = template.shape[0]
    aligned = {
        name: align(
            name,
            landmarks_px[:, :v].astype(np.float64),
            landmarks_world[:, :v].astype(np.float64),
            rotation.astype(np.float64),
            translation.astype(np.float64),
            template,
            skull_weights(mesh),
        )
        for name in ALIGNMENTS
    }
    observed = aligned[alignment]
    jaw_open = scores[:, score_names.index("jawOpen")] if "jawOpen" in score_names else np.zeros(n)
    rig = jaw_rig_displacement(template, jaw_open)  # (N, V, 3)
    residuals = observed - template - rig  # (N, V, 3)

    n_test = max(1, round(n * TEST_FRACTION))
    n_train = n - n_test
    n_val = max(1, round(n_train * VALIDATION_FRACTION))
    fit_sl, val_sl, test_sl = (
        slice(0, n_train - n_val),
        slice(n_train - n_val, n_train),
        slice(n_train, n),
    )
    train_sl = slice(0, n_train)

    names = tuple(n_ for n_ in score_names if n_ in ARKIT_NAMES)
    s = scores[:, [score_names.index(n_) for n_ in names]].astype(np.float64)
    regions = report_regions(template)
    data_weight = (~regions["outline"]).astype(np.float64)
    lap = mesh_laplacian(mesh.faces, template.shape[0])
    width = float(np.linalg.norm(template[FACE_WIDTH_PAIR[0]] - template[FACE_WIDTH_PAIR[1]]))

    def fit_on(sl: slice, ridge: float, smooth: float) -> Basis:
        implausible: dict[str, str] = {}
        while True:  # refit without shapes the clip could only extrapolate to nonsense
            plan = plan_ties(s[sl], names, implausible)
            masks = {name: region_weights(name, template) for name in plan.active}
            cols = tied_scores(s[sl], names, plan)
            column_regions = np.stack(
                [np.max([masks[plan.active[i]] for i in group], axis=0) for group in plan.columns]
            )
            intercept, shapes = solve_basis(
                residuals[sl], cols, column_regions, data_weight, lap, ridge, smooth
            )
            basis = assemble(intercept, shapes, plan, masks, template)
            found = implausible_shapes(basis, s[sl], names)
            if not found:
                return basis
            implausible.update(found)

    def inner_error(basis: Basis, sl: slice) -> float:
        pred = predict(basis, s[sl], names, template, rig[sl])
        return float(vertex_errors(pred, observed[sl])[:, ~regions["outline"]].mean())

    search = []
    for ridge in RIDGE_GRID:
        for smooth in SMOOTH_GRID:
            err = inner_error(fit_on(fit_sl, ridge, smooth), val_sl)
            search.append({"ridge": ridge, "smooth": smooth, "validation_cm": round(err, 4)})
    best = min(search, key=lambda r: r["validation_cm"])
    basis = fit_on(train_sl, best["ridge"], best["smooth"])

    # Baselines on the same alignment and split.
    mean_shape = observed[train_sl].mean(axis=0)
    test_obs = observed[test_sl]
    err_mean = vertex_errors(np.broadcast_to(mean_shape, test_obs.shape), test_obs)
    plain_intercept, plain_shapes = plain_ridge(
        (observed - template)[train_sl], s[train_sl], ridge=1e-3
    )
    plain_pred = template + plain_intercept + np.einsum("vck,nk->nvc", plain_shapes, s[test_sl])
    err_plain = vertex_errors(plain_pred, test_obs)
    err_ours = vertex_errors(predict(basis, s[test_sl], names, template, rig[test_sl]), test_obs)
    train_pred = predict(basis, s[train_sl], names, template, rig[train_sl])
    ss_res = ((observed[train_sl] - train_pred)[:, ~regions["outline"]] ** 2).sum()
    ss_tot = ((observed[train_sl] - mean_shape)[:, ~regions["outline"]] ** 2).sum()

    leakage = {}
    for name in ("jawOpen", "mouthSmileLeft", "eyeBlinkLeft", "browInnerUp"):
        if name not in names:
            continue
        mask = region_weights(name, template) >= MASK_FLOOR
        k_ours = ARKIT_NAMES.index(name)
        plain = np.linalg.norm(plain_shapes[:, :, names.index(name)], axis=1)
        ours = np.linalg.norm(basis.exprdirs[:, :, k_ours], axis=1)
        leakage[name] = {
            "plain_ridge_max_outside_region_cm": round(float(plain[~mask].max(initial=0.0)), 3),
            "ours_max_outside_region_cm": round(float(ours[~mask].max(initial=0.0)), 3),
            "plain_ridge_max_inside_cm": round(float(plain[mask].max()), 3),
            "ours_max_inside_cm": round(float(ours[mask].max()), 3),
        }

    alignment_comparison = {}
    inner = ~regions["outline"]
    for name, obs in aligned.items():
        base = obs[train_sl].mean(axis=0)
        icpt, shp = plain_ridge((obs - template)[train_sl], s[train_sl], ridge=1e-3)
        pred = template + icpt + np.einsum("vck,nk->nvc", shp, s[test_sl])
        alignment_comparison[name] = {
            "mean_shape_cm": round(
                float(
                    vertex_errors(np.broadcast_to(base, obs[test_sl].shape), obs[test_sl])[
                        :, inner
                    ].mean()
                ),
                4,
            ),
            "plain_ridge_cm": round(float(vertex_errors(pred, obs[test_sl])[:, inner].mean()), 4),
        }

    report: dict[str, object] = {
        "frames": {"train": n_train - n_val, "validation": n_val, "test": n_test, "total": n},
        "alignment": alignment,
        "alignment_comparison": alignment_comparison,
        "split": "temporal: train on the first frames, validate on the next, test on the last 20%",
        "face_width_cm": round(width, 3),
        "hyper_parameter_search": search,
        "chosen": {"ridge": best["ridge"], "smooth": best["smooth"]},
        "test_error": {
            "mean_shape": region_report(err_mean, regions, width),
            "plain_ridge": region_report(err_plain, regions, width),
            "ours": region_report(err_ours, regions, width),
        },
        "train_r2_inner": round(float(1 - ss_res / ss_tot), 4),
        "leakage": leakage,
        "side_check": blink_side_check(observed, s, names)
        if {"eyeBlinkLeft", "eyeBlinkRight"} <= set(names)
        else {},
        "tied": [list(g) for g in basis.tied],
        "inert": basis.inert_reason,
        "active": [n_ for n_, i in zip(ARKIT_NAMES, basis.inert, strict=True) if not i],
    }
    basis, scale = to_metric_scale(basis, template, aligned["perspective"][train_sl], inner)
    report["metric_scale"] = round(scale, 4)
    return FitResult(basis=basis, report=report)


def to_metric_scale(
    basis: Basis, template: np.ndarray, metric: np.ndarray, inner: np.ndarray
) -> tuple[Basis, float]:
    """The basis scaled about its face's centre to the size of MediaPipe's metric landmarks
    (`metric` (N, V, 3): the training frames in the canonical frame, unscaled), and the scale.

    The rigid-points alignment measures shape in the canonical mesh's size, judged by the skull's
    rigid points; a face whose proportions differ from the canonical one then comes out larger or
    smaller than the metric landmarks that MediaPipe's head pose places in the picture (the
    talking clip: 5% larger, a 0.4 cm misfit at the silhouette). Scaled, the mesh the avatar is
    trained and served on overlays the face it shows."""
    shape = (template + basis.identity_offset)[inner]  # (V', 3)
    target = metric.mean(axis=0)[inner]
    centre = shape.mean(axis=0)
    scale = float(((shape - centre) * (target - target.mean(axis=0))).sum())
    scale /= float(((shape - centre) ** 2).sum())
    full = template + basis.identity_offset
    scaled = centre + scale * (full - centre)
    return (
        dataclasses.replace(
            basis,
            identity_offset=(scaled - template).astype(np.float32),
            exprdirs=(basis.exprdirs * scale).astype(np.float32),
        ),
        scale,
    )


def save_basis(basis: Basis, path: Path) -> None:
    """Write the basis atomically (temp file + rename): a failed run leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(
            tmp,
            identity_offset=basis.identity_offset,
            exprdirs=basis.exprdirs,
            names=np.array(basis.names),
            inert=np.array(basis.inert),
            inert_reason=np.array(json.dumps(basis.inert_reason)),
            tied=np.array(json.dumps([list(g) for g in basis.tied])),
        )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the basis is a shipped, readable file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    from engine.capture.capture import capture_video
    from engine.capture.sample import SampleUnavailableError, fetch_sample_video
    from engine.capture.store import load_capture
    from engine.training.split import interleaved_split

    parser = argparse.ArgumentParser(
        prog="python -m engine basis", description=__doc__.split("\n\n")[0]
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--capture", type=Path, help="a directory written by `python -m engine capture`"
    )
    src.add_argument(
        "--sample",
        action="store_true",
        help=f"capture the sample clip first ({SAMPLE_CAPTURE_DIR})",
    )
    parser.add_argument(
        "--out", type=Path, default=BASIS_FILE, help=f"basis file (default {BASIS_FILE})"
    )
    parser.add_argument(
        "--report", type=Path, default=Path("docs/expression_basis"), help="report directory"
    )
    parser.add_argument("--alignment", choices=ALIGNMENTS, default="rigid-points")
    parser.add_argument(
        "--train-rows",
        action="store_true",
        help="fit on the training rows of the capture's interleaved split only (what an avatar "
        "trained on it may see; engine/training/split.py)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help=f"{DEVICE_CHOICES_HELP}; used by the capture's checks (the fit is a sparse CPU solve)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        capture_dir = args.capture
        if args.sample:
            capture_dir = SAMPLE_CAPTURE_DIR
            if not (capture_dir / "capture.npz").exists():
                capture_video(fetch_sample_video(), capture_dir, overwrite=True, device=str(device))
        data = load_capture(capture_dir)
        mesh = load_canonical_mesh()
        rows = interleaved_split(data.time_s).train if args.train_rows else slice(None)
        result = fit(
            data.landmarks_px[rows],
            data.landmarks_world[rows],
            data.rotation[rows],
            data.translation[rows],
            data.blendshapes[rows],
            data.blendshape_names,
            mesh=mesh,
            alignment=args.alignment,
        )
    except (ValueError, FileNotFoundError, SampleUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = dict(result.report)
    report["capture"] = str(capture_dir)
    report["rows"] = "interleaved split, training rows" if args.train_rows else "all"
    report["seconds"] = round(time.perf_counter() - started, 2)
    args.report.mkdir(parents=True, exist_ok=True)
    tmp_report = args.report / "report.json.tmp"
    tmp_report.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp_report, args.report / "report.json")
    save_basis(result.basis, args.out)
    render_sheet(
        HeadModel(build_default_head(args.out)),
        args.report / "shapes.png",
        f"default head: learned basis ({args.alignment} alignment) and jaw rig",
    )
    errors = report["test_error"]
    assert isinstance(errors, dict)
    print(f"basis written to {args.out}; report in {args.report}")
    for method in ("mean_shape", "plain_ridge", "ours"):
        row = errors[method]
        print(
            f"  held-out error {method:12s} {row['all_inner']['cm']:.3f} cm ({row['all_inner']['percent_face_width']:.2f}% of face width)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
