"""A face clip as a browser's webcam: Chromium plays a Y4M file as its camera with
`--use-fake-device-for-media-stream --use-file-for-fake-video-capture=FILE.y4m`, looping it.

    python -m bench.fake_camera CLIP OUT.y4m [--seconds S] [--width W] [--no-face-seconds G]

The Y4M is made with PyAV (muxer `yuv4mpegpipe`, codec `rawvideo`, yuv420p), frames resized to
`width` (even sizes, aspect kept) at the clip's own frame rate, the first `seconds` of the clip,
then `no_face_seconds` of plain grey (a camera that loses the face, then finds it as it loops).
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

DEFAULT_WIDTH = 640


def chromium_camera_flags(y4m: Path) -> list[str]:
    """The flags that make Chromium's camera play `y4m` and grant it without asking."""
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
    ]


def write_y4m(
    clip: Path,
    out: Path,
    seconds: float | None = None,
    width: int = DEFAULT_WIDTH,
    no_face_seconds: float = 0.0,
) -> tuple[int, float]:
    """Write the first `seconds` of `clip` (all of it when None), then `no_face_seconds` of grey,
    to `out` as Y4M; returns the clip's frame count and the frame rate. Written to a temporary name
    and renamed, so a failure leaves no half file."""
    if width < 16 or width % 2:
        raise ValueError(f"width must be even and at least 16, not {width}")
    tmp = out.with_name(out.name + ".part")
    count = 0
    with av.open(str(clip)) as src:
        stream = src.streams.video[0]
        rate = Fraction(stream.average_rate or 24)
        height = round(stream.codec_context.height * width / stream.codec_context.width / 2) * 2
        limit = None if seconds is None else max(1, round(seconds * float(rate)))
        try:
            with av.open(str(tmp), "w", format="yuv4mpegpipe") as dst:
                video = dst.add_stream("rawvideo", rate=rate)
                video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                for frame in src.decode(stream):
                    picture = frame.reformat(width=width, height=height, format="yuv420p")
                    picture.pts = count
                    picture.time_base = Fraction(1) / rate
                    for packet in video.encode(picture):
                        dst.mux(packet)
                    count += 1
                    if limit is not None and count >= limit:
                        break
                grey = av.VideoFrame.from_ndarray(
                    np.full((height, width, 3), 128, np.uint8), format="rgb24"
                ).reformat(format="yuv420p")
                for i in range(round(no_face_seconds * float(rate))):
                    grey.pts = count + i
                    grey.time_base = Fraction(1) / rate
                    for packet in video.encode(grey):
                        dst.mux(packet)
                for packet in video.encode():
                    dst.mux(packet)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if count == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{clip} has no video frames")
    tmp.replace(out)
    return count, float(rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_camera", description=__doc__)
    parser.add_argument("clip", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--no-face-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        frames, rate = write_y4m(
            args.clip, args.out, args.seconds, args.width, args.no_face_seconds
        )
    except (ValueError, FileNotFoundError, av.error.FFmpegError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {frames} frames at {rate:g} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
