"""A table of trained candidates, scored alike on validation frames (never the test frames: those
choose nothing).

    python -m engine.training.compare A.pt B.pt ... --data DIR [--frames 64] [--json OUT]
        [--strip PNG]

For each avatar: its settings and budget from its own record, then on `--frames` validation
frames of the capture it was trained on (the split it recorded, checked): the generator's PSNR
over the whole frame and over the face (the pixels the mesh covers), the warp's at k = 4 (a
distance the server's schedule serves), and the detail ratio: the variance of the Laplacian of
the grey face box in the generator's pictures over the same in the real frames (1 = as sharp as
the video; blur scores well on PSNR and low here). `--strip` writes a picture to look at: a few
of those validation frames, the real one on top and each candidate's generator below, in order.
`--turns` writes each candidate at the same head turns (the viewer's yaw, TURN_YAWS, past what
the clip shows too) and adds to the table how far Face Landmarker's read-back yaw misses them.
`--served` writes each candidate's warps over small served moves (engine/training/served_warps.py)
under its own generator's frames and adds how far they fall from them (`served_warp_psnr`).
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
from scipy.ndimage import laplace

from engine.capture.store import CaptureData, load_capture
from engine.controls import update
from engine.render.avatar import Avatar
from engine.training.evaluate import (
    batches,
    capture_frames,
    check_split,
    generator_renderer,
    score,
    split_of,
    warp_renderer,
)
from engine.training.readback import Reader
from engine.training.served_warps import served_warps
from engine.training.settings import TrainSettings
from engine.training.split import held_out_pairs

SETTING_KEYS = (
    "face_weight", "gradient_weight", "ssim_weight", "generator_controls", "geometry", "basis",
    "max_k", "batch", "seed", "precision", "adversarial", "lr_final", "framing", "mirror",
    "mirror_mark", "body", "warp_framing", "warp_flow", "warp_only", "min_k",
)  # fmt: skip
DEFAULTS = TrainSettings.__dataclass_fields__
WARP_K = 4
TURN_YAWS = (-25.0, -20.0, -15.0, -10.0, 0.0, 10.0, 20.0, 25.0)  # viewer's frame, degrees
DEFAULT_FRAMES = 64
STRIP_FRAMES = 5


def detail(images: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """(B, 3, H, W) in [0, 1] and (B, H, W) face masks -> per image, the variance of the
    Laplacian of the grey picture inside the face mask's bounding box."""
    out = []
    grey = (images.float().clamp(0, 1) * 255).mean(1).cpu().numpy()  # (B, H, W)
    for g, m in zip(grey, masks.cpu().numpy(), strict=True):
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            continue
        box = g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        out.append(float(laplace(box).var()))
    return out


def strip_rows(capture: CaptureData, avatar: Avatar, frames: int) -> torch.Tensor:
    """The validation rows a strip shows: evenly spaced over the clip."""
    split = split_of(avatar, capture.time_s)
    picks = np.linspace(0, len(split.validation) - 1, frames).round().astype(int)
    return torch.as_tensor(np.asarray(split.validation)[picks])


@torch.inference_mode()
def strip(paths: list[Path], capture: CaptureData, out: Path, frames: int = STRIP_FRAMES) -> None:
    """Real validation frames on the top row, each candidate's generator on the rows below."""
    rows: list[np.ndarray] = []
    t = None
    for path in paths:
        avatar = Avatar.load(path).prepare_for_inference()
        data = capture_frames(avatar, capture)
        if t is None:
            t = strip_rows(capture, avatar, frames)
            rows.append(_row_image(data.targets(t)))
        image, _ = generator_renderer(avatar, data)(t)
        rows.append(_row_image(image))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def _row_image(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (H, B * W, 3) uint8, side by side."""
    pictures = (images.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
    return np.concatenate(list(pictures.cpu().numpy()), axis=1)


@torch.inference_mode()
def row(
    path: Path, capture: CaptureData, frames: int, warp_ks: tuple[int, ...] = ()
) -> dict[str, Any]:
    """One candidate's settings, budget and validation scores; for each k in `warp_ks` also the
    warp's PSNR at k and how far it falls below the generator's on the same frames."""
    avatar = Avatar.load(path).prepare_for_inference()
    split = split_of(avatar, capture.time_s)
    check_split(avatar, split, capture.directory)
    data = capture_frames(avatar, capture)
    starts = held_out_pairs(split.validation, WARP_K)
    rows = starts[np.linspace(0, len(starts) - 1, min(frames, len(starts))).round().astype(int)]
    generator = score(data, rows + WARP_K, 0, generator_renderer(avatar, data))
    warp = score(data, rows, WARP_K, warp_renderer(avatar, data, WARP_K))
    ours, real = [], []
    render = generator_renderer(avatar, data)
    for t in batches(rows + WARP_K):
        image, x = render(t)
        ours += detail(image, x.mask)
        real += detail(data.targets(t), x.mask)
    summary = avatar.summary
    settings = summary.get("settings", {})
    served: dict[str, Any] = {}
    if data.framing is not None:  # as served: every frame at the training median
        plain = data.at_median()
        at_median = score(plain, rows + WARP_K, 0, generator_renderer(avatar, plain))
        served = {"generator_psnr_median_framing": at_median["psnr"]}
    return {
        "avatar": path.name,
        # A setting an older file does not record was trained at the default of its time.
        **{k: settings.get(k, getattr(DEFAULTS.get(k), "default", None)) for k in SETTING_KEYS},
        "steps": summary.get("steps"),
        "minutes": summary.get("minutes"),
        "val_frames": len(rows),
        "generator_psnr": generator["psnr"],
        "generator_face_psnr": generator.get("face_psnr"),
        "generator_ssim": generator["ssim"],
        **served,
        f"warp_k{WARP_K}_psnr": warp["psnr"],
        "detail_ratio": round(float(np.median(ours) / np.median(real)), 3),
        **{key: v for k in warp_ks for key, v in _warp_gap(avatar, data, split, k, frames).items()},
    }


def _warp_gap(avatar: Avatar, data: Any, split: Any, k: int, frames: int) -> dict[str, float]:
    """The warp at distance k on validation pairs, and its PSNR below the generator's on the
    same later frames, over the whole frame and in each region (`Scores.regions`: the face,
    below the head, around it): where the warp falls behind."""
    starts = held_out_pairs(split.validation, k)
    rows = starts[np.linspace(0, len(starts) - 1, min(frames, len(starts))).round().astype(int)]
    warp = score(data, rows, k, warp_renderer(avatar, data, k), regions=True)
    generator = score(data, rows + k, 0, generator_renderer(avatar, data), regions=True)
    below = {
        f"warp_k{k}_{region}_below_generator_db": round(
            generator["regions"][region]["psnr"] - warp["regions"][region]["psnr"], 3
        )
        for region in generator["regions"]
    }
    return {
        f"warp_k{k}_psnr": warp["psnr"],
        f"warp_k{k}_below_generator_db": round(generator["psnr"] - warp["psnr"], 3),
        **below,
    }


@torch.inference_mode()
def turn_pictures(avatar: Avatar) -> list[np.ndarray]:
    """The avatar at rest turned to each of TURN_YAWS, in the viewer's frame whatever its file
    says (the networks read world angles either way) and with no range held: every candidate
    at the same poses, the ones past what it learned included."""
    avatar.summary = {k: v for k, v in avatar.summary.items() if k != "pose_range_deg"}
    avatar.summary["pose_frame"] = "viewer"
    rest = avatar.rest
    return [
        avatar.render(update(rest, avatar.expression_names, pose={"yaw": yaw})) for yaw in TURN_YAWS
    ]


def served(paths: list[Path], rows: list[dict[str, Any]], out: Path | None) -> None:
    """Adds `served_warp_psnr` (`served_warps`) to each candidate's row; `out`: a PNG with each
    candidate's two rows, in order."""
    pictures = []
    for path, result in zip(paths, rows, strict=True):
        result["served_warp_psnr"], picture = served_warps(
            Avatar.load(path).prepare_for_inference()
        )
        pictures.append(picture)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(pictures, axis=0)).save(out)


def turns(paths: list[Path], rows: list[dict[str, Any]], out: Path | None) -> None:
    """Each candidate turned to TURN_YAWS and read back by Face Landmarker: adds `turn_error_deg`
    (mean |read-back yaw - commanded| where a face is found) and `turns_found` to its row;
    `out`: a PNG with one row of those pictures per candidate."""
    pictures: list[np.ndarray] = []
    with Reader() as reader:
        for path, result in zip(paths, rows, strict=True):
            images = turn_pictures(Avatar.load(path).prepare_for_inference())
            readings = [reader.read(image) for image in images]
            errors = [
                abs(r.angles[0] - y) for r, y in zip(readings, TURN_YAWS, strict=True) if r.found
            ]
            result["turns_found"] = f"{len(errors)}/{len(TURN_YAWS)}"
            result["turn_error_deg"] = round(float(np.mean(errors)), 2) if errors else None
            pictures.append(np.concatenate(images, axis=1))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(pictures, axis=0)).save(out)


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's, in first-seen order
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.training.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("avatars", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="the capture they trained on")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="validation frames")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--strip", type=Path, default=None, help="PNG: real frames, then each")
    parser.add_argument(
        "--turns",
        type=Path,
        default=None,
        help=f"PNG: each candidate at viewer yaw {', '.join(map(str, TURN_YAWS))}; the table "
        "gains how far its read-back yaw misses",
    )
    parser.add_argument(
        "--served",
        type=Path,
        default=None,
        help="PNG: each candidate's generator and served warps over small served moves (turns, "
        "jaw, smiles, blinks); the table gains the warps' PSNR from those generator frames",
    )
    parser.add_argument(
        "--warp-k",
        type=int,
        nargs="*",
        default=[],
        help="also score the warp at these distances against the generator on the same frames",
    )
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.warp_k):
        parser.error("--warp-k takes distances >= 1")
    try:
        capture = load_capture(args.data)
        rows = [row(p, capture, args.frames, tuple(args.warp_k)) for p in args.avatars]
        if args.strip is not None:
            strip(args.avatars, capture, args.strip)
        if args.turns is not None:
            turns(args.avatars, rows, args.turns)
        if args.served is not None:
            served(args.avatars, rows, args.served)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
