"""Quality of a trained avatar on the held-out test frames of its capture.

    python -m engine evaluate --avatar A --data DIR --out REPORT_DIR [--ablation A3 A34 A345]

Writes REPORT_DIR/report.json (keys: DESIGN.md, "Measurement contracts"), report.md, a plot of
quality against warp distance, an image strip (ground truth, generator, warp k=1, warp k=4) and a
strip of the avatar driven by controls alone (all-zero expression, then from its rest: jaw open,
no smile, smile, blink, head turns).
- generator: the generator run on every test frame (the baseline);
- warp_distance: for k = 1..8, frame t + k warped from the cache of frame t (supplemental Fig. 2);
- ablation: warp k=1 quality of avatars trained with cached layers C3, C3+C4, C3+C4+C5 on an
  equal budget (supplemental Table 1), when `--ablation` names them.
Metrics come from torchmetrics (L1 is the plain mean absolute error of [0, 1] images).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from engine.capture.capture import load_capture
from engine.controls import neutral, update
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.render.avatar import Avatar
from engine.runtime import tune_allocator
from engine.training.dataset import CaptureFrames, temporal_split

MAX_K = 8
BATCH = 8  # frames rendered at once
STRIP_FRAMES = 4
STRIP_K = (1, 4)
# What the controls strip shows: (label, expression weights, pose in degrees).
# Changes from the avatar's rest (`Avatar.rest`), after one picture of the all-zero expression.
CONTROL_POSES: tuple[tuple[str, dict[str, float], dict[str, float]], ...] = (
    ("rest", {}, {}),
    ("jawOpen 1", {"jawOpen": 1.0}, {}),
    ("smile 0", {"mouthSmileLeft": 0.0, "mouthSmileRight": 0.0}, {}),
    ("smile 1", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}, {}),
    ("blink 1", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, {}),
    ("yaw -15", {}, {"yaw": -15.0}),
    ("yaw +15", {}, {"yaw": 15.0}),
    ("yaw +30", {}, {"yaw": 30.0}),  # beyond the sample clip's range (-18..4 degrees)
)


def metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean L1, PSNR (dB) and SSIM of (N, 3, H, W) images in [0, 1]."""
    pred = pred.clamp(0.0, 1.0)
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0)
    assert isinstance(ssim, torch.Tensor)
    return {
        "l1": round(float((pred - target).abs().mean()), 5),
        "psnr": round(float(peak_signal_noise_ratio(pred, target, data_range=1.0)), 3),
        "ssim": round(float(ssim), 4),
    }


@torch.inference_mode()
def render_generator(avatar: Avatar, frames: CaptureFrames, rows: np.ndarray) -> torch.Tensor:
    out = [
        avatar.generate(frames.inputs(torch.as_tensor(rows[i : i + BATCH])))[0].image
        for i in range(0, len(rows), BATCH)
    ]
    return torch.cat(out).cpu()


@torch.inference_mode()
def render_warped(avatar: Avatar, frames: CaptureFrames, rows: np.ndarray, k: int) -> torch.Tensor:
    """Frames rows + k, each warped from the cache of frame rows."""
    out = []
    for i in range(0, len(rows), BATCH):
        t = torch.as_tensor(rows[i : i + BATCH])
        _, cache = avatar.generate(frames.inputs(t))
        out.append(avatar.warp(cache, frames.inputs(t + k)).image)
    return torch.cat(out).cpu()


def evaluate(avatar: Avatar, frames: CaptureFrames, test_rows: np.ndarray) -> dict[str, Any]:
    targets = frames.targets(torch.as_tensor(test_rows))
    generator = metrics(render_generator(avatar, frames, test_rows), targets)
    warp_distance = []
    for k in range(1, MAX_K + 1):
        rows = test_rows[test_rows + k <= test_rows[-1]]
        if len(rows) == 0:  # a test set shorter than k + 1 frames has no such pairs
            break
        warped = render_warped(avatar, frames, rows, k)
        warp_distance.append({"k": k, **metrics(warped, frames.targets(torch.as_tensor(rows + k)))})
    return {"generator": generator, "warp_distance": warp_distance}


def image_strip(avatar: Avatar, frames: CaptureFrames, test_rows: np.ndarray, out: Path) -> None:
    """Rows of: ground truth, generator, warp k=1, warp k=4 (from frame t - k), for a few frames."""
    picks = np.linspace(max(STRIP_K), len(test_rows) - 1, STRIP_FRAMES).round().astype(int)
    rows = test_rows[picks]
    columns = [frames.targets(torch.as_tensor(rows)), render_generator(avatar, frames, rows)]
    columns += [render_warped(avatar, frames, rows - k, k) for k in STRIP_K]
    grid = torch.cat(
        [torch.cat(list(col.clamp(0, 1)), dim=1) for col in columns], dim=2
    )  # (3, H*n, W*4)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out)


def control_strip(avatar: Avatar, out: Path) -> list[str]:
    """The all-zero expression, then one generator frame per entry of CONTROL_POSES, side by side;
    returns the labels in order."""
    names = avatar.expression_names
    pictures = [avatar.render(neutral(names))]
    for _, expression, pose in CONTROL_POSES:
        known = {k: v for k, v in expression.items() if k in names}
        pictures.append(avatar.render(update(avatar.rest, names, known, pose)))
    Image.fromarray(np.concatenate(pictures, axis=1)).save(out)
    return ["all 0"] + [label for label, _, _ in CONTROL_POSES]


def plot_warp_distance(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in report["warp_distance"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(ks, [r["psnr"] for r in report["warp_distance"]], "o-", label="warp from frame t")
    axes[0].axhline(report["generator"]["psnr"], color="k", ls="--", label="generator every frame")
    axes[0].set_xlabel("warp distance k (frames)")
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].legend()
    axes[1].plot(ks, [r["ssim"] for r in report["warp_distance"]], "o-")
    axes[1].axhline(report["generator"]["ssim"], color="k", ls="--")
    axes[1].set_xlabel("warp distance k (frames)")
    axes[1].set_ylabel("SSIM")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    g = report["generator"]
    lines = [
        f"# Evaluation of {report['avatar']}",
        "",
        f"{report['test_frames']} held-out test frames (the capture's last ones, never trained on).",
        "",
        "| | L1 | PSNR (dB) | SSIM |",
        "|---|---|---|---|",
        f"| generator every frame | {g['l1']:.4f} | {g['psnr']:.2f} | {g['ssim']:.4f} |",
    ]
    lines += [
        f"| warp k={r['k']} | {r['l1']:.4f} | {r['psnr']:.2f} | {r['ssim']:.4f} |"
        for r in report["warp_distance"]
    ]
    if report["ablation"]:
        lines += [
            "",
            "## Cached layers (warp k=1, equal training budget)",
            "",
            "| layers | L1 | PSNR | SSIM | budget |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['cache_layers']} | {r['l1']:.4f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['budget']} |"
            for r in report["ablation"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--avatar", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the capture it was trained on")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument(
        "--ablation",
        type=Path,
        nargs="*",
        default=[],
        help="avatars trained with other cache layers",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    args = parser.parse_args(argv)
    tune_allocator()
    try:
        device = resolve_device(args.device)
        avatar = Avatar.load(args.avatar, device).prepare_for_inference()
        capture = load_capture(args.data)
        ablation_avatars = [Avatar.load(p, device).prepare_for_inference() for p in args.ablation]
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frames = CaptureFrames(capture, avatar.head, avatar.resolution)
    test_rows = temporal_split(len(frames)).test
    report: dict[str, Any] = {
        "avatar": str(args.avatar),
        "test_frames": len(test_rows),
        "device": str(device),
    }
    report |= evaluate(avatar, frames, test_rows)
    report["ablation"] = []
    for path, other in zip(args.ablation, ablation_avatars, strict=True):
        rows = test_rows[:-1]
        warped = render_warped(other, CaptureFrames(capture, other.head, other.resolution), rows, 1)
        summary = other.summary.get("settings", {})
        report["ablation"].append(
            {
                "cache_layers": "+".join(c.upper() for c in other.config.cache_layers),
                **metrics(warped, frames.targets(torch.as_tensor(rows + 1))),
                "budget": f"{other.summary.get('steps')} steps, {other.summary.get('minutes')} min, batch {summary.get('batch')}",
                "avatar": str(path),
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_warp_distance(report, args.out / "warp_distance.png")
    image_strip(avatar, frames, test_rows, args.out / "strip.png")
    labels = control_strip(avatar, args.out / "controls.png")
    (args.out / "report.md").write_text(
        markdown(report)
        + "\n`strip.png`: columns ground truth, generator, warp k=1, warp k=4; rows test frames.\n"
        + f"`controls.png`, left to right: {', '.join(labels)}.\n"
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
