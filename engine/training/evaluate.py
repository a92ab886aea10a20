"""Quality of a trained avatar on the held-out test frames of its capture.

    python -m engine evaluate --avatar A --data DIR --out REPORT_DIR [--ablation A3 A34 A345]

The test frames are the interleaved test blocks of engine/training/split.py, recomputed from the
capture and checked against the split the avatar recorded when it was trained (a different
capture, or a different split, is refused). Everything streams in batches: memory does not grow
with the length of the clip. Writes REPORT_DIR/report.json (keys: DESIGN.md, "Measurement
contracts"), report.md, a plot of quality against warp distance, an image strip (truth,
generator, warps at the distances the server's schedule serves) and a strip of the avatar driven
by controls alone (all-zero expression, then from its rest: jaw, smile, blink, head turns).
- generator: the generator on every test frame (the baseline), with PSNR over the face alone
  (the pixels the mesh covers) beside the whole frame's, and `regions`: how the squared error
  splits between the face, the frame's bottom quarter off the face (the body below the head)
  and the rest; an avatar that reads each frame's framing (engine/training/framing.py) is also
  scored with every frame at the training median's (`generator_median_framing`: as served; an
  avatar that reads the body's pose too gets the body its head pose predicts, as served);
- warp_distance: for k = 1..8, frame t + k warped from the cache of frame t, both in one test
  block (supplemental Fig. 2); the server's default schedule serves k = 4..7;
- median_baseline: the per-pixel median of training crops, scored like a renderer (the trivial
  baseline);
- ablation: warp k=1 quality of avatars trained with cached layers C3, C3+C4, C3+C4+C5 on an
  equal budget (supplemental Table 1), when `--ablation` names them;
- backends: every backend's time and quality-gate figures (dB from fp32, dB lost against the
  truth) on the avatar's held-out reference frames, and the choice (`--backends none`: left out);
- readback: the avatar's stills read back by MediaPipe (engine/training/reenact.py), reenacted
  from `--source` (another person's clip, default the Pexels sample) with the sharpness of its
  face against the capture's own clip when that is a sample (`--reference` names another); the
  stills are drawn as served, through the avatar's measured response (`response`, copied from
  its file: engine/render/response.py) where it has one.
Metrics come from torchmetrics (L1 is the plain mean absolute error of [0, 1] images; PSNR pools
the squared error of all frames, as torchmetrics does over a batch).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from engine.capture.sample import SampleUnavailableError, sample_or_path
from engine.capture.store import CaptureData, load_capture
from engine.controls import neutral, update
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.pipeline.schedule import DEFAULT_SCHEDULE
from engine.render.avatar import Avatar, summary_as
from engine.render.backends.select import choose
from engine.render.frame_inputs import FrameInputs
from engine.runtime import tune_allocator
from engine.training.body import BODY_DIM, Body, body_shares
from engine.training.dataset import CaptureFrames
from engine.training.eval_report import markdown
from engine.training.framing import Framing
from engine.training.reenact import REENACT_SOURCES, readback
from engine.training.served_warps import SERVED_MOVES, served_warps
from engine.training.split import Split, held_out_pairs, interleaved_split

MAX_K = 8
BATCH = 8  # frames rendered at once
STRIP_FRAMES = 4
MEDIAN_FRAMES = 64  # training crops the median baseline is taken over
BELOW_FROM = 3  # the region "below" the head: the frame's rows from 3/4 of its height down
# What the controls strip shows: (label, expression weights, pose in degrees).
# Changes from the avatar's rest (`Avatar.rest`), after one picture of the all-zero expression.
CONTROL_POSES: tuple[tuple[str, dict[str, float], dict[str, float]], ...] = (
    ("rest", {}, {}),
    ("jawOpen 0.5", {"jawOpen": 0.5}, {}),
    ("jawOpen 1", {"jawOpen": 1.0}, {}),
    ("smile 1", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}, {}),
    ("blink 1", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, {}),
    ("yaw -15", {}, {"yaw": -15.0}),
    ("yaw +20", {}, {"yaw": 20.0}),
    ("pitch -10", {}, {"pitch": -10.0}),
    ("pitch +10", {}, {"pitch": 10.0}),
)

# What the limits strip sweeps, each past the avatar's limits (set aside) and as served (held):
# the jaw, and expressions the talking clip barely showed (their limits 0.12-0.16).
LIMIT_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
LIMIT_CHANNELS: tuple[tuple[str, ...], ...] = (
    ("jawOpen",),
    ("eyeWideLeft", "eyeWideRight"),
    ("mouthFunnel",),
    ("mouthFrownLeft", "mouthFrownRight"),
    ("mouthStretchLeft", "mouthStretchRight"),
)


@dataclass
class Scores:
    """Running sums for L1, PSNR (pooled squared error), SSIM (mean of per-image) and the face's
    PSNR (squared error over the pixels the mesh covers)."""

    frames: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    values: int = 0
    ssim_sum: float = 0.0
    face_sq_sum: float = 0.0
    face_values: int = 0
    # Off the face: squared error and values in the frame's bottom quarter (the body below the
    # head) and above it (hair, ears, background).
    region_sq: dict[str, float] = field(default_factory=lambda: {"below": 0.0, "around": 0.0})
    region_values: dict[str, int] = field(default_factory=lambda: {"below": 0, "around": 0})

    def add(self, pred: torch.Tensor, target: torch.Tensor, face: torch.Tensor | None) -> None:
        """pred, target (B, 3, H, W) in [0, 1]; face (B, H, W) bool or None."""
        pred = pred.float().clamp(0.0, 1.0).cpu()
        target = target.float().cpu()
        diff = pred - target
        self.frames += int(pred.shape[0])
        self.abs_sum += float(diff.abs().sum())
        self.sq_sum += float(diff.square().sum())
        self.values += diff.numel()
        ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
        assert isinstance(ssim, torch.Tensor)
        self.ssim_sum += float(ssim.sum())
        if face is not None:
            m = face[:, None].cpu().expand_as(diff)
            sq = diff.square()
            self.face_sq_sum += float(sq[m].sum())
            self.face_values += int(m.sum())
            below = torch.zeros_like(m)
            below[..., BELOW_FROM * m.shape[-2] // 4 :, :] = True
            for name, where in (("below", below & ~m), ("around", ~below & ~m)):
                self.region_sq[name] += float(sq[where].sum())
                self.region_values[name] += int(where.sum())

    def regions(self) -> dict[str, dict[str, float]]:
        """Per region (face, around it, below it): its share of the pixels, its share of the
        squared error, and its PSNR."""
        sq = {"face": self.face_sq_sum, **self.region_sq}
        values = {"face": self.face_values, **self.region_values}
        total_sq, total = max(sum(sq.values()), 1e-12), max(sum(values.values()), 1)
        return {
            name: {
                "pixels": round(values[name] / total, 4),
                "error": round(sq[name] / total_sq, 4),
                "psnr": round(psnr(sq[name] / max(values[name], 1)), 3),
            }
            for name in sq
        }

    def result(self) -> dict[str, float]:
        out = {
            "l1": round(self.abs_sum / max(self.values, 1), 5),
            "psnr": round(psnr(self.sq_sum / max(self.values, 1)), 3),
            "ssim": round(self.ssim_sum / max(self.frames, 1), 4),
        }
        if self.face_values:
            out["face_psnr"] = round(psnr(self.face_sq_sum / self.face_values), 3)
        return out


def psnr(mse: float) -> float:
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def batches(rows: np.ndarray) -> Iterator[torch.Tensor]:
    for i in range(0, len(rows), BATCH):
        yield torch.as_tensor(rows[i : i + BATCH])


Renderer = Callable[[torch.Tensor], tuple[torch.Tensor, FrameInputs]]


@torch.inference_mode()
def score(
    frames: CaptureFrames, rows: np.ndarray, k: int, render: Renderer, regions: bool = False
) -> dict[str, Any]:
    """Scores of `render(t)` (an image of frame t + k and that frame's inputs) over `rows`;
    `regions`: with where the error lies (Scores.regions)."""
    scores = Scores()
    for t in batches(rows):
        image, x = render(t)
        scores.add(image, frames.targets(t + k), x.mask)
    out: dict[str, Any] = scores.result()
    return out | {"regions": scores.regions()} if regions else out


def generator_renderer(avatar: Avatar, frames: CaptureFrames) -> Renderer:
    def render(t: torch.Tensor) -> tuple[torch.Tensor, FrameInputs]:
        x = frames.inputs(t)
        return avatar.generate(x, prepare=False)[0].image, x

    return render


def warp_renderer(avatar: Avatar, frames: CaptureFrames, k: int) -> Renderer:
    """Frame t + k warped from the cache of frame t."""

    def render(t: torch.Tensor) -> tuple[torch.Tensor, FrameInputs]:
        _, cache = avatar.generate(frames.inputs(t))
        x = frames.inputs(t + k)
        return avatar.warp(cache, x).image, x

    return render


def capture_frames(avatar: Avatar, capture: CaptureData) -> CaptureFrames:
    """The capture's frames as `avatar` was trained on them: streamed (not preloaded), with each
    frame's framing when its generator reads one (engine/training/framing.py)."""
    frames = CaptureFrames(capture, avatar.head, avatar.resolution, preload=False)
    if avatar.config.generator_framing:
        framing = Framing.from_dict(avatar.summary.get("framing"))
        dim, numbers = avatar.config.generator_framing, None
        if "body" in avatar.summary:
            # Read from each crop with the key colour fitted on the training frames.
            body = Body.from_dict(avatar.summary["body"])
            numbers = body.normalise(body_shares(frames.uint8, len(frames), body.key))
            dim -= BODY_DIM
        frames.use_framing(framing, dim, numbers)
    return frames


@torch.inference_mode()
def median_image(frames: CaptureFrames, train_rows: np.ndarray) -> torch.Tensor:
    """(1, 3, R, R) per-pixel median of up to MEDIAN_FRAMES training crops."""
    picks = train_rows[np.linspace(0, len(train_rows) - 1, MEDIAN_FRAMES).round().astype(int)]
    return frames.targets(torch.as_tensor(np.unique(picks))).median(dim=0, keepdim=True).values


def evaluate(avatar: Avatar, frames: CaptureFrames, split: Split) -> dict[str, Any]:
    test = split.test
    report: dict[str, Any] = {
        "generator": score(frames, test, 0, generator_renderer(avatar, frames), regions=True),
        "served_distances": list(DEFAULT_SCHEDULE.distances()),
    }
    warp_distance = []
    for k in range(1, MAX_K + 1):
        rows = held_out_pairs(test, k)
        if len(rows) == 0:  # test blocks shorter than k + 1 frames have no such pairs
            break
        warp_distance.append({"k": k, **score(frames, rows, k, warp_renderer(avatar, frames, k))})
    report["warp_distance"] = warp_distance
    median = median_image(frames, split.train)

    def constant(t: torch.Tensor) -> tuple[torch.Tensor, FrameInputs]:
        x = frames.inputs(t)
        return median.expand(len(t), -1, -1, -1), x

    report["median_baseline"] = score(frames, test, 0, constant)
    if frames.framing is not None:
        # As served: no source frame, every picture at the training median's framing (and the
        # body the pose predicts, engine/training/body.py).
        plain = frames.at_median()
        report["generator_median_framing"] = score(
            plain, test, 0, generator_renderer(avatar, plain)
        )
    return report


def check_split(avatar: Avatar, split: Split, data: Path) -> None:
    """Refuse to score an avatar on frames it may have trained on."""
    recorded = avatar.summary.get("split")
    if not isinstance(recorded, dict) or "digest" not in recorded:
        raise ValueError(
            "the avatar records no interleaved split (trained by an older engine): its test "
            "frames cannot be known, so it is not evaluated"
        )
    if recorded["digest"] != split.digest():
        raise ValueError(
            f"the avatar was trained on another split than this capture's ({data}): split "
            f"{recorded['digest']} recorded, {split.digest()} here"
        )


@torch.inference_mode()
def image_strip(avatar: Avatar, frames: CaptureFrames, split: Split, out: Path) -> list[str]:
    """Rows: test frames spread over the test blocks. Columns: truth, generator, and the frame
    warped from the cache of each distance the server's schedule serves. Returns the labels."""
    ks = tuple(k for k in DEFAULT_SCHEDULE.distances() if len(held_out_pairs(split.test, k)))
    ks = ks or (1,)  # test blocks shorter than the served distances (a short clip)
    starts = held_out_pairs(split.test, max(ks))
    picks = starts[np.linspace(0, len(starts) - 1, STRIP_FRAMES).round().astype(int)]
    rows = torch.as_tensor(picks + max(ks))  # each has all its served predecessors in its block
    columns = [frames.targets(rows), avatar.generate(frames.inputs(rows))[0].image]
    for k in ks:
        columns.append(warp_renderer(avatar, frames, k)(rows - k)[0])
    grid = torch.cat([torch.cat(list(c.float().clamp(0, 1).cpu()), dim=1) for c in columns], dim=2)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out)
    return ["truth", "generator"] + [f"warp k={k}" for k in ks]


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


def limits_strip(avatar: Avatar, out: Path) -> list[str]:
    """For each of LIMIT_CHANNELS (its names at once) at LIMIT_SWEEP from the rest, side by side:
    a row drawn with the avatar's expression limits set aside above a row as served (held at
    its limits, if any); returns the rows' labels."""
    names = avatar.expression_names
    limits = avatar.expression_limits
    rows, labels = [], []
    for channel in LIMIT_CHANNELS:
        known = [n for n in channel if n in names]
        if not known:
            continue
        for held in ({}, limits):
            with summary_as(avatar, "expression_limits", held):
                pictures = [
                    avatar.render(update(avatar.rest, names, dict.fromkeys(known, w)))
                    for w in LIMIT_SWEEP
                ]
            rows.append(np.concatenate(pictures, axis=1))
        label = "+".join(known)
        labels += [f"{label} past its limit", f"{label} held at {limits.get(known[0], 1.0)}"]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return labels


def plot_warp_distance(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in report["warp_distance"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(ks, [r["psnr"] for r in report["warp_distance"]], "o-", label="warp from frame t")
    axes[0].axhline(report["generator"]["psnr"], color="k", ls="--", label="generator every frame")
    served = report.get("served_distances") or []
    if served:
        axes[0].axvspan(min(served) - 0.5, max(served) + 0.5, color="0.9", label="served")
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


def plot_validation(history: list[dict[str, float]], out: Path) -> bool:
    """Validation PSNR against training steps, from the avatar's own record; False when it has
    none to plot."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label in (
        ("generator_face_psnr", "generator, face"),
        ("generator_psnr", "generator, whole frame"),
        ("warp_k1_psnr", "warp k=1"),
        ("warp_k4_psnr", "warp k=4"),
    ):
        values = [float(h.get(key, np.nan)) for h in history]  # older rows may lack a key
        if not np.isnan(values).all():
            ax.plot(steps, values, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def backend_figures(avatar_path: Path, device: torch.device) -> dict[str, Any]:
    """Every backend's gate figures (ms, dB from fp32, dB lost to truth) on the avatar's held-out
    reference frames, and what the server would choose on this machine with all its cores."""
    threads = torch.get_num_threads()
    selection = choose(avatar_path, "auto", "auto", str(device), threads)
    return selection.to_dict() | {"threads": threads}


def split_of(avatar: Avatar, time_s: np.ndarray) -> Split:
    recorded = avatar.summary.get("split")
    gap = recorded.get("gap") if isinstance(recorded, dict) else None
    return interleaved_split(time_s, gap=int(gap) if isinstance(gap, int) else MAX_K)


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
        help="avatars trained with other cache layers on the same capture and split",
    )
    parser.add_argument(
        "--source",
        nargs="+",
        default=list(REENACT_SOURCES),
        help="other people's clips for the read-back's reenactment (sample names or video "
        "paths; 'none': no read-back)",
    )
    parser.add_argument(
        "--reference", default=None, help="the avatar's own clip for the sharpness ratio"
    )
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument(
        "--backends",
        choices=("auto", "none"),
        default="auto",
        help="auto: every backend's quality gate figures in the report (as the server measures "
        "them at start-up, engine/render/backends); none: leave them out",
    )
    args = parser.parse_args(argv)
    tune_allocator()
    try:
        device = resolve_device(args.device)
        avatar = Avatar.load(args.avatar, device).prepare_for_inference()
        capture = load_capture(args.data)
        split = split_of(avatar, capture.time_s)
        check_split(avatar, split, args.data)
        others = [Avatar.load(p, device).prepare_for_inference() for p in args.ablation]
        for other in others:
            check_split(other, split_of(other, capture.time_s), args.data)
        if args.source != ["none"]:  # fetched (and checked) before the hour of evaluation
            for name in [*args.source, *([args.reference] if args.reference else [])]:
                sample_or_path(name)
    except (ValueError, FileNotFoundError, SampleUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frames = capture_frames(avatar, capture)
    report: dict[str, Any] = {
        "avatar": str(args.avatar),
        "test_frames": len(split.test),
        "split": split.digest(),
        "device": str(device),
    }
    report |= evaluate(avatar, frames, split)
    report["ablation"] = []
    for path, other in zip(args.ablation, others, strict=True):
        theirs = CaptureFrames(capture, other.head, other.resolution, preload=False)
        rows = held_out_pairs(split.test, 1)
        settings = other.summary.get("settings", {})
        report["ablation"].append(
            {
                "cache_layers": "+".join(c.upper() for c in other.config.cache_layers),
                **score(theirs, rows, 1, warp_renderer(other, theirs, 1)),
                "budget": f"{other.summary.get('steps')} steps, {other.summary.get('minutes')} "
                f"min, batch {settings.get('batch')}",
                "avatar": str(path),
            }
        )
    if args.backends == "auto":
        report["backends"] = backend_figures(args.avatar, device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_warp_distance(report, args.out / "warp_distance.png")
    strip = image_strip(avatar, frames, split, args.out / "strip.png")
    plot_validation(avatar.summary.get("history") or [], args.out / "validation.png")
    labels = control_strip(avatar, args.out / "controls.png")
    limit_rows = limits_strip(avatar, args.out / "expression_limits.png")
    served_psnr, served_picture = served_warps(avatar)
    report["served_warps"] = {"moves": len(SERVED_MOVES), "psnr_from_generator": served_psnr}
    Image.fromarray(served_picture).save(args.out / "served_warps.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.source != ["none"]:
        reference = args.reference or capture.source.get("sample")
        strip_path = args.out / "reenact.png"
        report["readback"] = readback(avatar, args.source, reference, strip_path)
        report["response"] = avatar.summary.get("response")
        (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "report.md").write_text(
        markdown(report)
        + f"\n`strip.png`, columns: {', '.join(strip)}; rows: test frames.\n"
        + f"`controls.png`, left to right: {', '.join(labels)}.\n"
        + f"`expression_limits.png`, left to right: {', '.join(map(str, LIMIT_SWEEP))}; rows: "
        + f"{'; '.join(limit_rows)}.\n"
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
