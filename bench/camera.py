"""Driving the avatar from a camera, measured in a real Chromium whose webcam plays a face clip.

`python -m bench.browser --camera CLIP` runs it (bench/browser.py); tests/test_camera.py checks the
behaviour with the same pieces. The page tracks the clip with MediaPipe in the browser and sends
controls; the same clip is tracked offline in Python (Face Landmarker, VIDEO mode, as `engine
capture` does) and the two are compared:

- tracked_share: camera frames the page tracked (the rest went by while it was busy), face_share:
  tracked frames with a face; the camera's and the tracking's frame rates, tracking time per frame;
- follow: correlation of the sent jawOpen, smile (mean of the two), blink (mean of the two) and yaw
  with the offline scores of the same clip frames. The clip loops in the fake camera, so the sent
  series (by capture time) is aligned to the offline one by the shift that correlates best;
- camera-to-avatar latency: a camera frame captured -> the avatar frame showing its control on
  screen, p50 / p95, and its parts (tracking, send, the server's own control-to-picture time, and
  the rest: encode, network, decode, display).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.capture.landmarks import detect
from engine.training.readback import PAIRS, pose_angles

CHANNELS = ("jawOpen", "smile", "blink", "yaw")


def channel_values(expression: dict[str, float], yaw: float) -> dict[str, float]:
    """The compared channels of one frame's scores (by name) and yaw: the read-back's channels
    (each the mean of its names) and yaw."""
    out = {
        channel: float(np.mean([expression.get(name, np.nan) for name in names]))
        for channel, names in PAIRS.items()
    }
    return out | {"yaw": float(yaw)}


def offline_series(clip: Path, frames: int | None = None) -> np.ndarray:
    """(F, 4) the channels of each of the clip's first `frames` frames, tracked offline (NaN where
    no face was found)."""
    det = detect(clip, frames, [], progress=False)
    rows = max(frames or 0, max(det.kept, default=-1) + 1)
    out = np.full((rows, len(CHANNELS)), np.nan)
    if not det.kept:
        return out
    yaws = [a[0] for a in pose_angles(det.matrices.astype(np.float64))]
    for row, index in enumerate(det.kept):
        scores = dict(zip(det.names, map(float, det.blendshapes[row]), strict=True))
        values = channel_values(scores, yaws[row])
        out[index] = [values[c] for c in CHANNELS]
    return out


def sent_series(
    log: Sequence[dict[str, Any]], fps: float, tracked: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The page's log -> (S,) camera frame numbers counted from the first tracked frame (by
    capture time) and (S, 4) the channels of the controls sent for frames with a face (with
    `tracked`, of the face as the page tracked it, before calibration, gains and filtering)."""
    rows = [e for e in log if e["kind"] == "face" and e["controls"] is not None]
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, len(CHANNELS)))
    start = min(e["capture"] for e in log)
    index = np.array([round((e["capture"] - start) / 1000.0 * fps) for e in rows], np.int64)

    def values(e: dict[str, Any]) -> dict[str, float]:
        if tracked:
            return channel_values(e["reading"]["scores"], e["reading"]["pose"]["yaw"])
        return channel_values(e["controls"]["expression"], e["controls"]["pose"]["yaw"])

    return index, np.array([[values(e)[c] for c in CHANNELS] for e in rows])


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 10 or a[ok].std() < 1e-6 or b[ok].std() < 1e-6:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def follow(index: np.ndarray, sent: np.ndarray, offline: np.ndarray, period: int) -> dict[str, Any]:
    """Correlation per channel of the sent values with the offline ones, at the shift of the
    looping clip (0..period-1) that correlates best over all channels; frames past the clip (the
    no-face tail of a test camera) have no offline value."""
    reference = np.full((period, len(CHANNELS)), np.nan)
    reference[: min(period, len(offline))] = offline[:period]
    best: tuple[float, int] = (-np.inf, 0)
    for shift in range(period):
        picked = reference[(index + shift) % period]
        scores = [_corr(sent[:, c], picked[:, c]) for c in range(len(CHANNELS))]
        total = sum(s for s in scores if s is not None)
        if total > best[0]:
            best = (total, shift)
    picked = reference[(index + best[1]) % period]
    correlations = {
        name: (None if (r := _corr(sent[:, c], picked[:, c])) is None else round(r, 3))
        for c, name in enumerate(CHANNELS)
    }
    return {"shift_frames": best[1], "frames": len(index), "correlation": correlations}


def rest_after_loss(log: Sequence[dict[str, Any]]) -> list[float]:
    """For each time the face was lost: ms from the last frame with a face to the last rest
    message of the ease back (runs without a face that ended before the ease are left out)."""
    out: list[float] = []
    last_face: float | None = None
    last_rest: float | None = None
    for e in log:
        if e["face"]:
            if last_face is not None and last_rest is not None:
                out.append(round(last_rest - last_face, 1))
            last_face, last_rest = e["capture"], None
        elif e["kind"] == "rest":
            last_rest = e["capture"]
    if last_face is not None and last_rest is not None:
        out.append(round(last_rest - last_face, 1))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(np.asarray(values), q)), 2)


def summarise(page: dict[str, Any], offline: np.ndarray, period: int, fps: float) -> dict[str, Any]:
    """The figures (module docstring) from what the page reports (`cameraReport()` in app.js)."""
    counts, log = page["counts"], page["log"]
    span_s = (log[-1]["capture"] - log[0]["capture"]) / 1000.0 if len(log) > 1 else 0.0
    index, sent = sent_series(log, fps)
    faceless_sends = sum(1 for e in log if not e["face"] and e["kind"] == "face")
    return {
        "camera_frames": counts["frames"],
        "tracked_share": round(counts["tracked"] / max(1, counts["frames"]), 3),
        "face_share": round(counts["faces"] / max(1, counts["tracked"]), 3),
        "camera_fps": round(counts["frames"] / span_s, 2) if span_s else None,
        "tracked_fps": round(counts["tracked"] / span_s, 2) if span_s else None,
        "tracking_ms_p50": percentile(page["tracking_ms"], 50),
        "tracking_ms_p95": percentile(page["tracking_ms"], 95),
        "delegate": page["delegate"],
        "thread": page["thread"],
        "capture_time_from_camera": all(e["captureKnown"] for e in log),
        "sent_without_face": faceless_sends,
        "rest_after_loss_ms": rest_after_loss(log),
        "follow": follow(index, sent, offline, period),
        # The same for the page's tracking before any mapping: what the tracker itself gives.
        "follow_tracked": follow(*sent_series(log, fps, tracked=True), offline, period),
    }
