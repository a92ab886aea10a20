"""MediaPipe Face Landmarker over a video: per frame, 478 landmarks, 52 blendshape scores and a
head pose. MediaPipe runs on the CPU (its XNNPACK delegate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
from tqdm import tqdm

from engine.capture.decode import decode, frame_count
from engine.capture.geometry import NUM_LANDMARKS
from engine.head.canonical_mesh import TASK_BUNDLE


def landmarker(video: bool = True) -> vision.FaceLandmarker:
    """Face Landmarker in VIDEO mode (frames of one clip, tracked) or IMAGE mode (unrelated
    pictures), one face, with blendshapes and transformation matrices."""
    mode = vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(TASK_BUNDLE)),
        running_mode=mode,
        num_faces=1,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    return vision.FaceLandmarker.create_from_options(options)


@dataclass(frozen=True)
class Detections:
    """What the landmarker found (N = frames with a face, K = blendshapes)."""

    frames_total: int
    kept: list[int]  # (N,) decode-order frame numbers
    no_face: list[int]
    time_s: list[float]  # (N,)
    landmarks: np.ndarray  # (N, 478, 3) float32 normalised
    matrices: np.ndarray  # (N, 4, 4) float32
    blendshapes: np.ndarray  # (N, K) float32
    names: list[str]  # (K,) in the model's own order
    size: tuple[int, int]  # W, H of the upright frames
    rotation_deg: int


def detect(
    video: Path,
    max_frames: int | None,
    errors: list[tuple[int | None, str]],
    progress: bool = True,
) -> Detections:
    """Run Face Landmarker over every frame; a frame without a face is listed, never filled."""
    expected = frame_count(video)
    total = min(expected, max_frames) if expected and max_frames else (expected or max_frames)
    kept: list[int] = []
    no_face: list[int] = []
    times: list[float] = []
    landmarks: list[np.ndarray] = []
    matrices: list[np.ndarray] = []
    blendshapes: list[np.ndarray] = []
    names: list[str] = []
    size, rotation_deg, count = (0, 0), 0, 0
    frames = decode(video, max_frames, errors)
    with landmarker() as model:
        for frame in tqdm(frames, total=total, unit="frame", disable=not progress):
            count += 1
            frame_size = (frame.rgb.shape[1], frame.rgb.shape[0])
            if count > 1 and frame_size != size:  # one camera needs one frame size
                raise ValueError(
                    f"frame {frame.index} of {video} is {frame_size[0]}x{frame_size[1]}, earlier "
                    f"frames {size[0]}x{size[1]}: a capture needs one frame size"
                )
            size, rotation_deg = frame_size, frame.rotation_deg
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=frame.rgb)
            result = model.detect_for_video(image, frame.timestamp_ms)
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

    def stacked(items: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.stack(items) if items else np.zeros((0, *shape), np.float32)

    return Detections(
        frames_total=count,
        kept=kept,
        no_face=no_face,
        time_s=times,
        landmarks=stacked(landmarks, (NUM_LANDMARKS, 3)),
        matrices=stacked(matrices, (4, 4)),
        blendshapes=stacked(blendshapes, (len(names),)),
        names=names,
        size=size,
        rotation_deg=rotation_deg,
    )
