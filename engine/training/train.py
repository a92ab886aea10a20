"""Train an avatar on a capture: the generator, the neural texture and the warp network together.

    python -m engine train --data DIR --preset cpu --out AVATAR.pt [--max-minutes M] [--seed S]
        [--cache-layers c3,c4,c5] [--warp-kind implicit|explicit] [--max-k 2] [--resume]

Each step takes pairs of frames (t, t + k), k uniform in 1..max_k, from the training split: the
generator renders frame t and leaves its cache, the warp network renders frame t + k from that
cache (as in the paper), and the texture's first three channels are pulled towards the colours
they cover. Losses are L1 plus a structural term (1 - SSIM, torchmetrics); no perceptual term,
since no VGG weights can be had offline here. Both frames of a pair are moved by the same random
zoom and shift, applied to the mesh before rasterising and to the target image, so the UV map and
the target stay aligned. A checkpoint is written every few minutes and at the end; `--resume`
continues from it bit for bit in the step count, the optimiser and the random streams.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from tqdm import tqdm

from engine.capture.capture import load_capture
from engine.controls import pose_range, rest_expression
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.default import build_default_head
from engine.head.model import HeadModel
from engine.render.avatar import Avatar
from engine.render.frame_inputs import random_affines
from engine.render.networks import PRESETS
from engine.render.networks.config import WarpKind
from engine.runtime import tune_allocator
from engine.training.dataset import CaptureFrames, sample_pairs, temporal_split

SSIM_WEIGHT = 0.2  # structural term next to L1
TEXTURE_WEIGHT = 0.5  # texture colour loss, early guidance for the neural texture
TEXTURE_LR_FACTOR = 5.0  # the texture learns faster than the networks, as in DNR
AUG_SHIFT_PX_FRACTION = 0.03  # random shift up to 3% of the image
AUG_SCALE = 0.05  # random zoom up to +-5%
CHECKPOINT_EVERY_S = 300.0
VALIDATE_EVERY = 100  # steps
VALIDATION_FRAMES = 8


@dataclass(frozen=True)
class TrainSettings:
    preset: str
    steps: int
    max_minutes: float
    batch: int
    max_k: int
    lr: float
    seed: int
    cache_layers: tuple[str, ...]
    warp_kind: WarpKind
    generator_controls: int | None = None


def losses(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, L1) of (B, 3, H, W) images in [0, 1]."""
    l1 = (pred - target).abs().mean()
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0)
    assert isinstance(ssim, torch.Tensor)
    return l1 + SSIM_WEIGHT * (1.0 - ssim), l1


@torch.inference_mode()
def validate(avatar: Avatar, frames: CaptureFrames, rows: torch.Tensor) -> dict[str, float]:
    """PSNR of the generator on `rows` and of the warp from each row's predecessor (k = 1)."""
    avatar.eval()
    x_prev, x = frames.inputs(rows - 1), frames.inputs(rows)
    target = frames.targets(rows)
    full, _ = avatar.generate(x)
    _, cache = avatar.generate(x_prev)
    warped = avatar.warp(cache, x)
    avatar.train()
    return {
        "generator_psnr": float(
            peak_signal_noise_ratio(full.image.clamp(0, 1), target, data_range=1.0)
        ),
        "warp_k1_psnr": float(
            peak_signal_noise_ratio(warped.image.clamp(0, 1), target, data_range=1.0)
        ),
    }


def median_background(frames: CaptureFrames, rows: Any) -> torch.Tensor:
    """(1, 3, R, R) per-pixel median of the training crops: a good start for the background."""
    sample = frames.images[torch.as_tensor(rows)[:: max(1, len(rows) // 64)]].float() / 255.0
    return sample.median(dim=0, keepdim=True).values


def train_step(
    avatar: Avatar,
    optimizer: torch.optim.Optimizer,
    frames: CaptureFrames,
    t_rows: torch.Tensor,
    tk_rows: torch.Tensor,
    affine: torch.Tensor | None,
    device: torch.device,
) -> tuple[float, float]:
    """One optimiser step on pairs (t, t + k); returns the generator's and the warp's L1."""
    with torch.no_grad():
        x_t, x_tk = frames.inputs(t_rows, affine), frames.inputs(tk_rows, affine)
        y_t = frames.targets(t_rows, affine).to(device)
        y_tk = frames.targets(tk_rows, affine).to(device)
    full, cache = avatar.generate(x_t)
    warped = avatar.warp(cache, x_tk)
    loss_g, l1_g = losses(full.image, y_t)
    loss_w, l1_w = losses(warped.image, y_tk)
    tex = avatar.texture_rgb(x_t)  # (B, 3, H, W)
    covered = x_t.mask[:, None].to(tex.dtype)  # (B, 1, H, W)
    loss_tex = ((tex - y_t).abs() * covered).sum() / covered.sum().clamp_min(1.0) / 3.0
    loss = loss_g + loss_w + TEXTURE_WEIGHT * loss_tex
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(l1_g.detach()), float(l1_w.detach())


def make_optimizer(avatar: Avatar, lr: float) -> torch.optim.Optimizer:
    texture = list(avatar.texture.parameters())
    ids = {id(p) for p in texture}
    rest = [p for p in avatar.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.Adam(
        [{"params": texture, "lr": lr * TEXTURE_LR_FACTOR}, {"params": rest, "lr": lr}]
    )


def train(
    data_dir: Path,
    out: Path,
    settings: TrainSettings,
    device: torch.device,
    resume: bool = False,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> Avatar:
    tune_allocator()
    torch.manual_seed(settings.seed)
    checkpoint = checkpoint or out.with_suffix(".ckpt")
    capture = load_capture(data_dir)
    head_data = build_default_head()
    config = replace(
        PRESETS[settings.preset], cache_layers=settings.cache_layers, warp_kind=settings.warp_kind
    )
    if settings.generator_controls is not None:
        config = replace(config, generator_control_dim=settings.generator_controls)
    frames = CaptureFrames(capture, HeadModel(head_data), config.resolution)
    split = temporal_split(len(frames))
    avatar = Avatar(config, head_data, capture.camera, frames.median_translation)
    with torch.no_grad():
        avatar.background.copy_(median_background(frames, split.train))
    avatar.to(device).use_channels_last().train()
    frames.head = avatar.head  # rasterise with the avatar's own head model (same arrays)
    optimizer = make_optimizer(avatar, settings.lr)
    rng = torch.Generator().manual_seed(settings.seed)
    step, elapsed = 0, 0.0
    history: list[dict[str, float]] = []
    if resume:
        step, elapsed, history = _load_checkpoint(checkpoint, avatar, optimizer, rng, settings)
    val_rows = torch.as_tensor(
        split.validation[1 :: max(1, len(split.validation) // VALIDATION_FRAMES)]
    )
    res = config.resolution
    budget_s = settings.max_minutes * 60.0
    started = time.perf_counter() - elapsed
    last_ckpt = time.perf_counter()
    # With a time budget the step count is unknown: the bar then counts steps without a total.
    total = settings.steps if math.isinf(settings.max_minutes) else None
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", unit="step")
    while step < settings.steps and time.perf_counter() - started < budget_s:
        t_rows, tk_rows = sample_pairs(split.train, settings.batch, settings.max_k, rng)
        affine = random_affines(settings.batch, res, AUG_SHIFT_PX_FRACTION * res, AUG_SCALE, rng)
        l1_g, l1_w = train_step(avatar, optimizer, frames, t_rows, tk_rows, affine, device)
        step += 1
        bar.update(1)
        if step % VALIDATE_EVERY == 0 or step == settings.steps:
            row: dict[str, float] = {
                "step": step,
                "minutes": round((time.perf_counter() - started) / 60.0, 2),
                "l1_generator": round(l1_g, 5),
                "l1_warp": round(l1_w, 5),
                **{k: round(v, 3) for k, v in validate(avatar, frames, val_rows).items()},
            }
            history.append(row)
            bar.set_postfix(psnr_g=row["generator_psnr"], psnr_w=row["warp_k1_psnr"])
        if time.perf_counter() - last_ckpt > CHECKPOINT_EVERY_S:
            _save_checkpoint(
                checkpoint,
                avatar,
                optimizer,
                rng,
                step,
                time.perf_counter() - started,
                history,
                settings,
            )
            last_ckpt = time.perf_counter()
    bar.close()
    elapsed = time.perf_counter() - started
    _save_checkpoint(checkpoint, avatar, optimizer, rng, step, elapsed, history, settings)
    avatar.summary = {
        "data": str(data_dir),
        "frames": len(frames),
        "split": split.to_dict(),
        "pose_range_deg": pose_range(capture.rotation[split.train]),
        "rest_expression": rest_expression(
            frames.expression[split.train].numpy(), avatar.expression_names
        ),
        "settings": settings.__dict__ | {"cache_layers": list(settings.cache_layers)},
        "steps": step,
        "minutes": round(elapsed / 60.0, 2),
        "device": str(device),
        "torch": str(torch.__version__),
        "history": history,
        "final_validation": history[-1] if history else None,
    }
    avatar.eval()
    avatar.save(out)
    return avatar


def _save_checkpoint(
    path: Path,
    avatar: Avatar,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    step: int,
    elapsed: float,
    history: list[dict[str, float]],
    settings: TrainSettings,
) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "step": step,
            "elapsed": elapsed,
            "history": history,
            "settings": json.dumps(
                settings.__dict__ | {"cache_layers": list(settings.cache_layers)}
            ),
            "model": avatar.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.get_state(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def _load_checkpoint(
    path: Path,
    avatar: Avatar,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    settings: TrainSettings,
) -> tuple[int, float, list[dict[str, float]]]:
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(ckpt["settings"])
    mine = settings.__dict__ | {"cache_layers": list(settings.cache_layers)}
    differs = {
        k
        for k in (
            "preset",
            "cache_layers",
            "warp_kind",
            "batch",
            "max_k",
            "seed",
            "generator_controls",
        )
        if saved.get(k) != mine[k]
    }
    if differs:
        raise ValueError(
            f"--resume: checkpoint {path} was made with other settings: {sorted(differs)}"
        )
    avatar.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng.set_state(ckpt["rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    return int(ckpt["step"]), float(ckpt["elapsed"]), list(ckpt["history"])


def parse_cache_layers(text: str) -> tuple[str, ...]:
    layers = tuple(p.strip() for p in text.split(",") if p.strip())
    allowed = {("c3",), ("c3", "c4"), ("c3", "c4", "c5")}
    if layers not in allowed:
        raise argparse.ArgumentTypeError(
            f"--cache-layers must be c3, c3,c4 or c3,c4,c5, got {text!r}"
        )
    return layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="a capture directory (engine.capture.capture)"
    )
    parser.add_argument("--out", type=Path, required=True, help="avatar file to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=1_000_000, help="stop after this many steps")
    parser.add_argument("--max-minutes", type=float, default=math.inf, help="stop after this long")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-k", type=int, default=2, help="warp distances 1..K during training")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-layers", type=parse_cache_layers, default=("c3", "c4", "c5"))
    parser.add_argument("--warp-kind", choices=("implicit", "explicit"), default="implicit")
    parser.add_argument(
        "--generator-controls",
        type=int,
        default=None,
        help="condition the generator on the controls with this many channels (0: off; "
        "default: the preset's)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op CPU threads (default: torch's choice, one per core); 1 lets two runs "
        "share a 2-core machine without fighting over the cores",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.max_k < 1 or not args.max_minutes > 0:
        parser.error("--steps, --batch, --max-k and --max-minutes must be positive")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be positive")
        torch.set_num_threads(args.threads)
    settings = TrainSettings(
        preset=args.preset,
        steps=args.steps,
        max_minutes=args.max_minutes,
        batch=args.batch,
        max_k=args.max_k,
        lr=args.lr,
        seed=args.seed,
        cache_layers=args.cache_layers,
        warp_kind=args.warp_kind,
        generator_controls=args.generator_controls,
    )
    try:
        device = resolve_device(args.device)
        avatar = train(
            args.data, args.out, settings, device, resume=args.resume, progress=not args.quiet
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    final = avatar.summary.get("final_validation")
    print(
        f"avatar written to {args.out}: {avatar.summary['steps']} steps, {avatar.summary['minutes']} min, validation {final}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
