"""Read-back: does the rendered face do what it was told, judged by an independent tracker?

Stills of the avatar are read back by MediaPipe Face Landmarker (IMAGE mode, the bundle in
`static/`), the same tracker a webcam user's page runs, and compared with the controls that made
them:
- detected: the share of stills in which a face is found at all;
- rise: the read-back score of jawOpen, smile (both sides' mean) and blink (both sides' mean) at
  weight 1 minus at the avatar's rest;
- sweep_corr: the correlation of read-back yaw and pitch with commanded sweeps over the offered
  range;
- reenact: for each clip of another person, the controls tracked from it, sent as states as a
  webcam page would; correlation of read-back and source for jawOpen, smile, blink and yaw, beside
  the spread (standard deviation) of what was sent: a correlation over a channel the source
  hardly moves (the Pexels clip's jawOpen: 0 to 0.13) measures the tracker's noise, not the
  avatar;
- sharpness_ratio: the variance of the Laplacian over the face box of the stills against the same
  over real frames of a reference clip (grey, face box resized to SHARPNESS_PX).

`measure` takes a `render(state) -> (H, W, 3) uint8` function, so the same measurement runs
through a server's `GET /still.png` (bench/readback.py) or on an avatar file (engine evaluate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mediapipe as mp
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import laplace

from engine.capture.decode import decode, frame_count
from engine.capture.geometry import nearest_rotation
from engine.capture.landmarks import detect, landmarker
from engine.head.canonical_mesh import NUM_VERTICES
from engine.render.frame_inputs import angles_from_rotation
from engine.render.response import CHANNELS

SWEEP_STEPS = 9  # commanded angles per sweep
REENACT_FRAMES = 120  # source frames sent as states, spread over the clip (60 missed every
# blink of a 53 s webcam clip: one frame in 22, a blink lasting 5)
REFERENCE_FRAMES = 40  # real frames of the reference clip for the sharpness figure
SHARPNESS_PX = 128  # face boxes are resized to this before the Laplacian
PAIRS = CHANNELS  # read-back channel -> the expression names it averages

State = dict[str, dict[str, float]]  # {"expression": {...}, "pose": {...}}: a still's state
Render = Callable[[State], np.ndarray]


@dataclass(frozen=True)
class Reading:
    """What the tracker reads off one picture: scores by name, yaw / pitch / roll in degrees
    (the engine's convention, as captured controls have them) and the face box (x0, y0, x1, y1)
    in pixels; found False when no face was found (the rest is then empty)."""

    found: bool
    scores: dict[str, float]
    angles: tuple[float, float, float]
    box: tuple[int, int, int, int]

    def channel(self, name: str) -> float:
        if name == "yaw":
            return self.angles[0]
        if name == "pitch":
            return self.angles[1]
        return float(np.mean([self.scores.get(n, 0.0) for n in PAIRS[name]]))


class Reader:
    """Face Landmarker over single pictures."""

    def __init__(self) -> None:
        self.model = landmarker(video=False)

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, rgb: np.ndarray) -> Reading:
        """(H, W, 3) uint8 picture -> its reading."""
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        result = self.model.detect(image)
        if not result.face_landmarks:
            return Reading(False, {}, (0.0, 0.0, 0.0), (0, 0, 0, 0))
        h, w = rgb.shape[:2]
        pts = np.array([(p.x * w, p.y * h) for p in result.face_landmarks[0][:NUM_VERTICES]])
        x0, y0 = np.floor(pts.min(0)).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int)
        scores = {c.category_name: float(c.score) for c in result.face_blendshapes[0]}
        matrix = np.asarray(result.facial_transformation_matrixes[0], np.float64)
        return Reading(True, scores, pose_angles(matrix[None])[0], (x0, y0, x1, y1))


def pose_angles(matrices: np.ndarray) -> list[tuple[float, float, float]]:
    """(N, 4, 4) MediaPipe transformation matrices -> yaw, pitch, roll in degrees."""
    rot = torch.from_numpy(nearest_rotation(matrices[:, :3, :3].astype(np.float64))).float()
    ypr = angles_from_rotation(rot)[:, :3].double().numpy()
    return [tuple(float(a) for a in row) for row in ypr]  # type: ignore[misc]


def correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson correlation; None where either side does not vary (it says nothing then)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 3 or x.std() < 1e-9 or y.std() < 1e-9:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)


def laplacian_variance(rgb: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Variance of the Laplacian of the grey face box, resized to SHARPNESS_PX square."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)
    grey = Image.fromarray(rgb[y0:y1, x0:x1]).convert("L")
    small = np.asarray(grey.resize((SHARPNESS_PX, SHARPNESS_PX), Image.Resampling.BILINEAR))
    return float(laplace(small.astype(np.float64)).var())


@dataclass(frozen=True)
class SourceClip:
    """Controls tracked from a clip (frames spread over it): per frame the ARKit scores by name and
    yaw / pitch / roll in degrees, and the frame's decode-order number."""

    scores: list[dict[str, float]]
    angles: list[tuple[float, float, float]]
    frames: list[int]
    name: str = "source"


def track_clip(video: Path, frames: int = REENACT_FRAMES, name: str | None = None) -> SourceClip:
    """Face Landmarker over the whole clip (VIDEO mode, as a page tracks a webcam), then `frames`
    of its tracked frames spread evenly; `name` labels it in the report (default: the file's)."""
    det = detect(video, None, [], progress=False)
    if not det.kept:
        raise ValueError(f"no face found in any frame of {video}")
    picks = np.linspace(0, len(det.kept) - 1, min(frames, len(det.kept))).round().astype(int)
    angles = pose_angles(det.matrices[picks].astype(np.float64))
    scores = [dict(zip(det.names, map(float, det.blendshapes[i]), strict=True)) for i in picks]
    return SourceClip(scores, angles, [det.kept[i] for i in picks], name or video.stem)


def reference_frames(video: Path, count: int = REFERENCE_FRAMES) -> Iterator[np.ndarray]:
    """`count` frames spread over the clip (every n-th decoded frame). The container's frame count
    spares a decode of the whole clip; only a clip that does not declare one is counted first."""
    total = frame_count(video) or sum(1 for _ in decode(video))
    step = max(1, total // count)
    for frame in decode(video):
        if frame.index % step == 0 and frame.index // step < count:
            yield frame.rgb


def source_state(
    scores: dict[str, float],
    angles: tuple[float, float, float],
    names: Sequence[str],
    pose_limits: dict[str, list[float]],
) -> State:
    """One tracked frame as a state: scores mapped by name onto the avatar's expressions (the page
    does the same), angles clamped into what the protocol accepts."""
    expression = {n: round(min(max(scores[n], 0.0), 1.0), 4) for n in names if n in scores}
    pose = {
        axis: round(min(max(value, pose_limits[axis][0]), pose_limits[axis][1]), 3)
        for axis, value in zip(("yaw", "pitch", "roll"), angles, strict=True)
    }
    return {"expression": expression, "pose": pose}


def reenact(
    read: Callable[[State], Reading],
    source: SourceClip,
    names: Sequence[str],
    accepted_pose: dict[str, list[float]],
) -> dict[str, Any]:
    """Send `source`'s tracked frames as states, read each picture back: per channel the
    correlation of read-back with sent, and the spread of what was sent."""
    sent: dict[str, list[float]] = {c: [] for c in (*PAIRS, "yaw")}
    back: dict[str, list[float]] = {c: [] for c in (*PAIRS, "yaw")}
    found = 0
    for scores, angles in zip(source.scores, source.angles, strict=True):
        got = read(source_state(scores, angles, names, accepted_pose))
        if not got.found:
            continue
        found += 1
        for c in PAIRS:
            sent[c].append(float(np.mean([scores.get(n, 0.0) for n in PAIRS[c]])))
            back[c].append(got.channel(c))
        sent["yaw"].append(angles[0])
        back["yaw"].append(got.channel("yaw"))
    return {
        "source": source.name,
        "frames": len(source.scores),
        "detected": found,
        "corr": {c: correlation(sent[c], back[c]) for c in sent},
        "sent_sd": {c: round(float(np.std(v)), 4) if v else None for c, v in sent.items()},
        "sent_range": {
            c: [round(float(min(v)), 3), round(float(max(v)), 3)] if v else None
            for c, v in sent.items()
        },
    }


def measure(
    render: Render,
    names: Sequence[str],
    pose_limits: dict[str, list[float]],
    accepted_pose: dict[str, list[float]],
    sources: Sequence[SourceClip] = (),
    reference: Path | None = None,
) -> dict[str, Any]:
    """The read-back report (module docstring) of the avatar behind `render`. names: its
    expression names; pose_limits: the poses it offers (sweeps span them); accepted_pose: what
    the protocol accepts (reenacted poses are clamped into it); sources: clips of other people
    to reenact, each reported under its name."""
    readings: list[Reading] = []
    stills: list[tuple[np.ndarray, Reading]] = []

    def read(reader: Reader, state: State) -> Reading:
        picture = render(state)
        reading = reader.read(picture)
        readings.append(reading)
        stills.append((picture, reading))
        return reading

    report: dict[str, Any] = {}
    with Reader() as reader:
        rest = read(reader, {})
        rise: dict[str, float | None] = {}
        for channel, members in PAIRS.items():
            if not set(members) <= set(names):
                rise[channel] = None
                continue
            full = read(reader, {"expression": {n: 1.0 for n in members}})
            ok = rest.found and full.found
            rise[channel] = round(full.channel(channel) - rest.channel(channel), 4) if ok else None
        report["rise"] = rise
        report["rest"] = {c: round(rest.channel(c), 4) for c in PAIRS} if rest.found else None
        sweeps: dict[str, float | None] = {}
        sweep_points: dict[str, list[list[float]]] = {}
        for axis in ("yaw", "pitch"):
            lo, hi = pose_limits[axis]
            commanded, seen = [], []
            for angle in np.linspace(lo, hi, SWEEP_STEPS):
                got = read(reader, {"pose": {axis: round(float(angle), 3)}})
                if got.found:
                    commanded.append(float(angle))
                    seen.append(got.channel(axis))
            sweeps[axis] = correlation(commanded, seen)
            sweep_points[axis] = [
                [round(c, 2), round(s, 2)] for c, s in zip(commanded, seen, strict=True)
            ]
        report["sweep_corr"] = sweeps
        report["sweeps"] = sweep_points
        if sources:
            report["reenact"] = [
                reenact(lambda state: read(reader, state), s, names, accepted_pose) for s in sources
            ]
        if reference is not None:
            real = []
            for rgb in reference_frames(reference):
                got = reader.read(rgb)
                if got.found:
                    real.append(laplacian_variance(rgb, got.box))
            ours = [laplacian_variance(p, r.box) for p, r in stills if r.found]
            if real and ours:
                report["sharpness"] = {
                    "stills": round(float(np.median(ours)), 2),
                    "reference": round(float(np.median(real)), 2),
                }
                report["sharpness_ratio"] = round(float(np.median(ours) / np.median(real)), 4)
    report["stills"] = len(readings)
    report["detected"] = round(sum(r.found for r in readings) / len(readings), 4)
    return report
