"""Train an avatar on a capture: the generator, the neural texture and the warp network together.

    python -m engine train --data DIR --preset cpu --out AVATAR.pt [--max-minutes M] [--seed S]
        [--cache-layers c3,c4,c5] [--warp-kind implicit|explicit] [--max-k 2] [--resume]

Each step takes pairs of frames (t, t + k), k uniform in 1..max_k, from the training split
(engine/training/split.py: interleaved held-out blocks, a gap of max_k frames around each): the
generator renders frame t and leaves its cache, the warp network renders frame t + k from that
cache (as in the paper), and the texture's first three channels are pulled towards the colours
they cover. max_k defaults to 8, past the distances the served schedule warps over (parallel, two
workers, four warps: 4..7). Losses: L1 plus a structural term (1 - SSIM, torchmetrics, weighted
by `--ssim-weight`); options:
an L1 of image gradients (edges that a blur loses and PSNR forgives), both L1 terms weighted
towards the face (the pixels the mesh covers count 1 + face_weight times), and an adversarial
patch loss (engine/training/adversarial.py). No perceptual term, since no VGG weights can be had
offline here. The face weight and the gradient term are off by default: at an equal 15-minute
budget they lost 0.4 dB whole-frame and 0.7 dB on the face itself (README, "The shipped avatar"). Both frames of a pair are moved by
the same random zoom and shift, applied to the mesh before rasterising and to the target image, so
the UV map and the target stay aligned.

The mesh a frame is trained on is `basis` (rebuilt from its blendshape scores and pose through the
head model, as serving does) or `landmarks` (MediaPipe's tracked landmarks themselves: the
geometry the picture shows, mouth opening included). `--precision bf16` runs the forward passes
under CPU autocast in bfloat16 (`auto`: where the CPU has AVX-512 BF16 or AMX). A checkpoint is
written every few minutes and at the end; `--resume` continues from it in the step count, the
optimiser and the random streams. `--warp-only --init A.pt --min-k 4` trains a finished avatar's
warp alone on the served distances (texture, generator and background frozen; the step itself is
in engine/training/step.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
)
from tqdm import tqdm

from engine.camera import Camera
from engine.capture.store import load_capture
from engine.controls import ANGLE_SCALE_DEG, expression_limits, pose_range, rest_expression
from engine.cpu import has_native_bf16
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.default import build_default_head
from engine.head.model import HeadModel
from engine.render.avatar import Avatar
from engine.render.frame_inputs import random_affines, seen_rotation
from engine.render.networks import PRESETS
from engine.runtime import tune_allocator
from engine.training.adversarial import Critic
from engine.training.body import BODY_DIM, Body
from engine.training.continuation import (
    load_avatar,
    load_checkpoint,
    save_checkpoint,
    stage_record,
)
from engine.training.dataset import CaptureFrames
from engine.training.framing import FRAMING_DIM, Framing
from engine.training.mirror import mirror_points, mirror_rotation, name_partners
from engine.training.reference_frames import build_reference
from engine.training.settings import (
    DEFAULT_FACE_WEIGHT,
    DEFAULT_GRADIENT_WEIGHT,
    DEFAULT_SSIM_WEIGHT,
    Precision,
    TrainSettings,
)
from engine.training.split import Split, interleaved_split, pair_starts, sample_pairs
from engine.training.step import train_step

DEFAULT_MAX_K = 8  # warp distances 1..8 cover the served schedule's 4..7
TEXTURE_LR_FACTOR = 5.0  # the texture learns faster than the networks, as in DNR
AUG_SHIFT_PX_FRACTION = 0.03  # random shift up to 3% of the image
AUG_SCALE = 0.05  # random zoom up to +-5%
CHECKPOINT_EVERY_S = 300.0
VALIDATE_EVERY = 100  # steps
VALIDATION_FRAMES = 16
VALIDATION_K = (1, 4)  # warp distances validated: the nearest and one the schedule serves


@torch.inference_mode()
def validate(
    avatar: Avatar, frames: CaptureFrames, rows: dict[int, torch.Tensor]
) -> dict[str, float]:
    """PSNR of the generator on the validation rows, whole frame and face (the pixels the mesh
    covers), and of the warp at each distance k in VALIDATION_K from the cache of the frame k
    before (`rows[k]`: frames t whose t + k is validation too; the generator is scored on the
    frames rows[min k] + min k)."""
    avatar.eval()
    out: dict[str, float] = {}
    for k, t in rows.items():
        target = frames.targets(t + k)
        x = frames.inputs(t + k)
        _, cache = avatar.generate(frames.inputs(t))
        warped = avatar.warp(cache, x).image.float().clamp(0, 1)
        out[f"warp_k{k}_psnr"] = float(peak_signal_noise_ratio(warped, target, data_range=1.0))
        if k == min(rows):
            full = avatar.generate(x)[0].image.float().clamp(0, 1)
            face = x.mask[:, None].expand_as(full)
            out["generator_psnr"] = float(peak_signal_noise_ratio(full, target, data_range=1.0))
            face_mse = (full - target).square()[face].mean()
            out["generator_face_psnr"] = float(-10.0 * torch.log10(face_mse.clamp_min(1e-12)))
    avatar.train()
    first = ("generator_psnr", "generator_face_psnr")
    return {**{k: out[k] for k in first}, **{k: v for k, v in out.items() if k not in first}}


def validation_rows(split: Split) -> dict[int, torch.Tensor]:
    """For each k in VALIDATION_K, VALIDATION_FRAMES frames t spread over the validation blocks
    whose t + k is in the same block."""
    chosen = {}
    for k in VALIDATION_K:
        starts = pair_starts(split.validation, k)
        step = max(1, len(starts) // VALIDATION_FRAMES)
        chosen[k] = torch.as_tensor(starts[step // 2 :: step][:VALIDATION_FRAMES])
    return chosen


def median_background(frames: CaptureFrames, rows: Any) -> torch.Tensor:
    """(1, 3, R, R) per-pixel median of the training crops: a good start for the background."""
    sample = frames.uint8(torch.as_tensor(rows)[:: max(1, len(rows) // 64)]).float() / 255.0
    return sample.median(dim=0, keepdim=True).values


def trained_pose_range(
    rotation: np.ndarray, centre: np.ndarray, camera: Camera, mirror: bool
) -> dict[str, list[float]]:
    """The poses an avatar offers (`engine.controls.pose_range`), in the viewer's frame (as
    served, `Avatar.pose_frame`), from its training frames' (N, 3, 3) head rotations and (N, 3)
    head centres; when mirroring, the union of theirs and their mirror images' (each set's own
    percentiles: pooled, the clip's rare far turns would lose their share)."""
    turned = torch.from_numpy(np.asarray(rotation, dtype=np.float32))
    at = torch.from_numpy(np.asarray(centre, dtype=np.float32))
    sets = [(turned, at)]
    if mirror:
        sets.append((mirror_rotation(turned, camera), mirror_points(at, camera)))
    ranges = [pose_range(seen_rotation(r, c, camera).double().numpy()) for r, c in sets]
    return {
        key: [min(r[key][0] for r in ranges), max(r[key][1] for r in ranges)] for key in ranges[0]
    }


def lr_factor(progress: float, final: float) -> float:
    """The learning rate's share of its start at `progress` (0..1) through a run's budget: a
    half cosine from 1 down to `final` (1: constant). With a constant rate the validation PSNR
    of a long run swung by a dB between checks; annealing settles it."""
    progress = min(max(progress, 0.0), 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(avatar: Avatar, lr: float, warp_only: bool = False) -> torch.optim.Optimizer:
    if warp_only:  # the rest keeps its weights (and Adam no state for them)
        return torch.optim.Adam([{"params": list(avatar.warp_net.parameters()), "lr": lr}])
    texture = list(avatar.texture.parameters())
    ids = {id(p) for p in texture}
    rest = [p for p in avatar.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.Adam(
        [{"params": texture, "lr": lr * TEXTURE_LR_FACTOR}, {"params": rest, "lr": lr}]
    )


def generator_mirrored(stages: list[dict[str, Any]], settings: TrainSettings) -> bool:
    """Whether the generator was ever trained on mirrored pairs: by an earlier stage (`stages`,
    each with its `mirror` and `warp_only`) or by this run. The poses and expressions an avatar
    offers are what its generator learned to draw, so a run of the warp alone (the generator
    frozen) keeps its mirrored range even when it sees no mirror itself."""
    runs = [*stages, {"mirror": settings.mirror, "warp_only": settings.warp_only}]
    return any((run.get("mirror") or 0) > 0 and not run.get("warp_only") for run in runs)


def train(
    data_dir: Path,
    out: Path,
    settings: TrainSettings,
    device: torch.device,
    resume: bool = False,
    checkpoint: Path | None = None,
    progress: bool = True,
    init: Path | None = None,
) -> Avatar:
    """Train an avatar on the capture in `data_dir` and write it to `out`. `resume` continues
    from `out`'s checkpoint (optimiser included); `init` continues from a finished avatar file
    instead (a committed one: its weights, step count, minutes and history, with a fresh
    optimiser), which must have been trained with the same settings on the same split."""
    tune_allocator()
    torch.manual_seed(settings.seed)
    checkpoint = checkpoint or out.with_suffix(".ckpt")
    capture = load_capture(data_dir)
    head_data = build_default_head(Path(settings.basis)) if settings.basis else build_default_head()
    config = replace(
        PRESETS[settings.preset],
        cache_layers=settings.cache_layers,
        warp_kind=settings.warp_kind,
        warp_flow=settings.warp_flow,
    )
    if settings.generator_controls is not None:
        config = replace(config, generator_control_dim=settings.generator_controls)
    framing_dim = FRAMING_DIM + int(settings.mirror_mark)
    if settings.framing:
        config = replace(
            config,
            generator_framing=framing_dim + BODY_DIM * int(settings.body),
            warp_framing=settings.warp_framing,
        )
    frames = CaptureFrames(capture, HeadModel(head_data), config.resolution)
    split = interleaved_split(capture.time_s, gap=settings.max_k)
    framing = Framing.fit(capture.crop_boxes, split.train) if settings.framing else None
    body, body_numbers = None, None
    if settings.body:
        angles = frames.angles.numpy() / ANGLE_SCALE_DEG  # as the control vector holds them
        body, shares = Body.fit(frames.uint8, len(frames), split.train, angles)
        body_numbers = body.normalise(shares)
    if framing is not None:
        frames.use_framing(framing, framing_dim, body_numbers)
    starts = pair_starts(split.train, settings.max_k)
    avatar = Avatar(config, head_data, capture.camera, frames.median_translation(split.train))
    with torch.no_grad():
        avatar.background.copy_(median_background(frames, split.train))
    avatar.to(device).use_channels_last().train()
    frames.head = avatar.head  # rasterise with the avatar's own head model (same arrays)
    optimizer = make_optimizer(avatar, settings.lr, settings.warp_only)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint's annealed
    critic = Critic.create(device) if settings.adversarial > 0 else None
    rng = torch.Generator().manual_seed(settings.seed)
    step, elapsed = 0, 0.0
    history: list[dict[str, float]] = []
    stages: list[dict[str, Any]] = []  # earlier runs this one continues, each with its losses
    if resume and init is not None:
        raise ValueError("--resume and --init both say where to continue from: give one")
    if resume:
        step, elapsed, history, stages = load_checkpoint(
            checkpoint, avatar, optimizer, rng, settings, critic
        )
    if init is not None:
        step, elapsed, history, stages = load_avatar(init, avatar, settings, split)
        rng.manual_seed(settings.seed + step)  # not the pairs the first run drew again
    val_rows = validation_rows(split)
    res = config.resolution
    budget_s = settings.max_minutes * 60.0
    started = time.perf_counter() - elapsed
    # This run's stretch of the budget, which the learning rate anneals over (steps or time,
    # whichever runs out first); a --resume'd run picks up where its checkpoint was.
    first_step, first_s = (stages[-1]["steps"], stages[-1]["minutes"] * 60.0) if stages else (0, 0)
    last_ckpt = time.perf_counter()
    # With a time budget the step count is unknown: the bar then counts steps without a total.
    total = settings.steps if math.isinf(settings.max_minutes) else None
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", unit="step")
    while step < settings.steps and time.perf_counter() - started < budget_s:
        t_rows, tk_rows = sample_pairs(starts, settings.batch, settings.max_k, rng, settings.min_k)
        affine = random_affines(settings.batch, res, AUG_SHIFT_PX_FRACTION * res, AUG_SCALE, rng)
        # Drawn only when mirroring, so that runs without it draw the pairs they always did.
        mirrored = (
            torch.rand(settings.batch, generator=rng) < settings.mirror if settings.mirror else None
        )
        if settings.lr_final != 1.0:
            by_steps = (step - first_step) / max(1, settings.steps - first_step)
            by_time = (time.perf_counter() - started - first_s) / max(1e-9, budget_s - first_s)
            factor = lr_factor(max(by_steps, by_time), settings.lr_final)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
        l1_g, l1_w = train_step(
            avatar, optimizer, frames, t_rows, tk_rows, affine, device, settings, critic, mirrored
        )
        step += 1
        bar.update(1)
        last = step == settings.steps or time.perf_counter() - started >= budget_s
        if step % VALIDATE_EVERY == 0 or last:
            row: dict[str, float] = {
                "step": step,
                "minutes": round((time.perf_counter() - started) / 60.0, 2),
                "l1_generator": round(l1_g, 5),
                "l1_warp": round(l1_w, 5),
                **{k: round(v, 3) for k, v in validate(avatar, frames, val_rows).items()},
            }
            history.append(row)
            bar.set_postfix(psnr_g=row["generator_psnr"], psnr_w4=row["warp_k4_psnr"])
        if time.perf_counter() - last_ckpt > CHECKPOINT_EVERY_S:
            save_checkpoint(
                checkpoint,
                avatar,
                optimizer,
                rng,
                step,
                time.perf_counter() - started,
                history,
                settings,
                critic,
                stages,
            )
            last_ckpt = time.perf_counter()
    bar.close()
    elapsed = time.perf_counter() - started
    save_checkpoint(
        checkpoint, avatar, optimizer, rng, step, elapsed, history, settings, critic, stages
    )
    drawn_mirrored = generator_mirrored(stages, settings)
    avatar.summary = {
        "data": str(data_dir),
        "source": capture.source | {"frames_captured": len(frames)},
        "frames": len(frames),
        "split": split.to_dict(),
        "pose_frame": "viewer",
        "pose_range_deg": trained_pose_range(
            capture.rotation[split.train],
            frames.head_centres(split.train).numpy(),
            capture.camera,
            drawn_mirrored,
        ),
        "rest_expression": rest_expression(
            frames.expression[split.train].numpy(), avatar.expression_names
        ),
        "expression_limits": expression_limits(
            frames.expression[split.train].numpy(),
            avatar.expression_names,
            name_partners(avatar.expression_names) if drawn_mirrored else None,
        ),
        "settings": settings.to_dict(),
        **({"framing": framing.to_dict()} if framing is not None else {}),
        **({"body": body.to_dict()} if body is not None else {}),
        "steps": step,
        "minutes": round(elapsed / 60.0, 2),
        "device": str(device),
        "torch": str(torch.__version__),
        "history": history,
        "final_validation": history[-1] if history else None,
    }
    if stages:
        avatar.summary["stages"] = [*stages, stage_record(settings.to_dict(), step, elapsed)]
    avatar.serve_framing()  # served frames: the body the pose predicts (engine/training/body)
    avatar.eval()
    avatar.reference = build_reference(frames, split)
    avatar.save(out)
    return avatar


def choose_precision(wanted: str, device: str) -> Precision:
    """fp32 or bf16 for training: bf16 on request, or with `auto` on a CPU with native bfloat16
    (AVX-512 BF16 or AMX; on AVX2 alone bf16 convs ran 100x slower, shared/MEASURED.md)."""
    if wanted in ("fp32", "bf16"):
        return "bf16" if wanted == "bf16" else "fp32"
    if device not in ("auto", "cpu") and not device.startswith("cpu"):
        return "fp32"
    if device == "auto" and torch.cuda.is_available():
        return "fp32"
    return "bf16" if has_native_bf16() else "fp32"


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
    parser.add_argument(
        "--max-k", type=int, default=DEFAULT_MAX_K, help="warp distances 1..K during training"
    )
    parser.add_argument("--face-weight", type=float, default=DEFAULT_FACE_WEIGHT)
    parser.add_argument("--gradient-weight", type=float, default=DEFAULT_GRADIENT_WEIGHT)
    parser.add_argument(
        "--ssim-weight",
        type=float,
        default=DEFAULT_SSIM_WEIGHT,
        help=f"weight of the structural term, 1 - SSIM (default {DEFAULT_SSIM_WEIGHT})",
    )
    parser.add_argument(
        "--geometry",
        choices=("basis", "landmarks"),
        default="basis",
        help="train on meshes rebuilt from the scores (as served) or on the tracked landmarks",
    )
    parser.add_argument(
        "--adversarial",
        type=float,
        default=0.0,
        help="weight of an adversarial patch loss (engine/training/adversarial.py; 0: off)",
    )
    parser.add_argument(
        "--basis",
        default=None,
        help="expression basis file for the default head (default: the shipped one)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16: forward passes under CPU autocast; auto: bf16 where the CPU has AVX-512 "
        "BF16 or AMX, else fp32",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--lr-final",
        type=float,
        default=1.0,
        help="learning rate at the end of this run's budget as a share of --lr, reached by a "
        "half cosine (1: constant; an --init run anneals over its own stretch)",
    )
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
    parser.add_argument(
        "--framing",
        action="store_true",
        help="the generator also reads where each crop sat in its source frame (the body below "
        "the head follows it; served at the training median); with --init it may be turned on "
        "over an avatar trained without it",
    )
    parser.add_argument(
        "--mirror",
        type=float,
        default=0.0,
        help="share of training pairs seen in a mirror (picture, background and controls "
        "flipped left to right: the head turns the way the clip rarely does); 0: none",
    )
    parser.add_argument(
        "--mirror-mark",
        action="store_true",
        help="the framing also says which pairs were mirrored, so that the served frame (as "
        "filmed) gets the body as filmed, not its average with the flipped one; with --init it "
        "may be turned on over an avatar trained without it",
    )
    parser.add_argument(
        "--body",
        action="store_true",
        help="the framing also says where the shoulders are (four numbers read from each crop "
        "against its plain background; served as the head pose predicts them), so that the body is "
        "not the average of every pose it took; with --init it may be turned on over an "
        "avatar trained without it",
    )
    parser.add_argument(
        "--warp-framing",
        action="store_true",
        help="the warp reads the framing too (its frame's and its cache's: the shoulders move "
        "between them and the controls do not say how; served as the head pose predicts them); "
        "with --init it may be turned on over an avatar trained without it",
    )
    parser.add_argument(
        "--warp-flow",
        action="store_true",
        help="the implicit warp moves its cached C4 and C5 along a flow it predicts at H/4; with "
        "--init it may be turned on over an avatar trained without it",
    )
    parser.add_argument(
        "--warp-only",
        action="store_true",
        help="train the warp alone (texture, generator and background frozen, caches made as "
        "served); with --init, a finished avatar's warp fitted to the distances --min-k..--max-k",
    )
    parser.add_argument(
        "--min-k", type=int, default=1, help="the shortest warp distance trained (default 1)"
    )
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from a finished avatar file trained with the same settings (weights, "
        "steps and minutes; a fresh optimiser): --max-minutes counts its minutes too",
    )
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
    if min(args.face_weight, args.gradient_weight, args.ssim_weight, args.adversarial) < 0:
        parser.error(
            "--face-weight, --gradient-weight, --ssim-weight and --adversarial must not be negative"
        )
    if not 0.0 <= args.mirror <= 1.0:
        parser.error("--mirror must be in [0, 1]: a share of the training pairs")
    continued = args.init is not None or args.resume
    if args.mirror_mark and not (args.framing and (args.mirror > 0 or continued)):
        # Continued with --mirror 0 an avatar that reads the mark sees every pair marked as
        # filmed (the warp alone fitted to the unmirrored clip, as it is served).
        parser.error("--mirror-mark needs --framing and --mirror above 0: it marks mirrored pairs")
    if args.body and not args.framing:
        parser.error("--body needs --framing: its numbers join the framing's")
    if args.warp_framing and not args.framing:
        parser.error("--warp-framing needs --framing: the warp reads the generator's numbers")
    if args.warp_flow and args.warp_kind != "implicit":
        parser.error("--warp-flow is the implicit warp's: the explicit one moves its cache")
    if not 1 <= args.min_k <= args.max_k:
        parser.error(f"--min-k must be in 1..--max-k ({args.max_k})")
    if args.warp_only and args.init is None and not args.resume:
        parser.error("--warp-only trains the warp of a finished avatar: give --init (or --resume)")
    if not 0.0 < args.lr_final <= 1.0:
        parser.error("--lr-final must be in (0, 1]: a share of --lr")
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
        lr_final=args.lr_final,
        seed=args.seed,
        cache_layers=args.cache_layers,
        warp_kind=args.warp_kind,
        generator_controls=args.generator_controls,
        face_weight=args.face_weight,
        gradient_weight=args.gradient_weight,
        ssim_weight=args.ssim_weight,
        geometry=args.geometry,
        basis=args.basis,
        adversarial=args.adversarial,
        framing=args.framing,
        mirror=args.mirror,
        mirror_mark=args.mirror_mark,
        body=args.body,
        warp_framing=args.warp_framing,
        warp_flow=args.warp_flow,
        warp_only=args.warp_only,
        min_k=args.min_k,
        precision=choose_precision(args.precision, args.device),
    )
    try:
        device = resolve_device(args.device)
        avatar = train(
            args.data,
            args.out,
            settings,
            device,
            resume=args.resume,
            progress=not args.quiet,
            init=args.init,
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
