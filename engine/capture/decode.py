"""Video decoding for capture: every decodable frame, upright, as a C-contiguous RGB array.

PyAV's `to_ndarray(format="rgb24")` returns a view with padded rows whenever the width times three
is not a multiple of the decoder's line alignment (a 360-pixel-wide clip: strides (1104, 3, 1));
MediaPipe's `mp.Image` reads such an array as if it were packed and finds no face in it. Every frame
leaves here packed (`np.ascontiguousarray`), whatever its width or display rotation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

DEFAULT_FPS = 30.0  # only for numbering frames that carry no timestamp


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # decode-order number among frames that decoded
    time_s: float
    timestamp_ms: int  # strictly increasing, what MediaPipe's VIDEO mode demands
    rgb: np.ndarray  # (H, W, 3) uint8, upright, C-contiguous
    rotation_deg: int  # display rotation that was undone (ffmpeg's sign: -90 = turned clockwise)


def open_video(video: Path) -> av.container.InputContainer:
    """Open `video`; a ValueError names a file that is missing, unreadable or has no video."""
    try:
        container = av.open(str(video))
    except (av.error.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"cannot open video {video}: {reason}") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"no video stream in {video}")
    return container


def stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def frame_count(video: Path) -> int | None:
    """The frame count the container declares, or None when it does not say."""
    with open_video(video) as container:
        return container.streams.video[0].frames or None


def upright_rgb(frame: av.VideoFrame) -> tuple[np.ndarray, int]:
    """A decoded frame -> ((H, W, 3) packed uint8 RGB with its display rotation undone, rotation)."""
    rgb: np.ndarray = frame.to_ndarray(format="rgb24")
    # Display matrix as ffmpeg's autorotate reads it: rotation -90 = turn clockwise.
    rotation = round((frame.rotation or 0) / 90) * 90  # odd angles: nearest quarter
    if rotation % 360:
        rgb = np.rot90(rgb, rotation // 90)
    return np.ascontiguousarray(rgb), rotation


def decode(
    video: Path, max_frames: int | None = None, errors: list[tuple[int | None, str]] | None = None
) -> Iterator[DecodedFrame]:
    """Every decodable frame of the first video stream, upright, in presentation order. A packet
    the decoder rejects is appended to `errors` and skipped; its frame gets no number."""
    with open_video(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = stream_fps(stream) or DEFAULT_FPS
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
                rgb, rotation = upright_rgb(frame)
                yield DecodedFrame(index, time_s, ms, rgb, rotation)
                index += 1
