"""Video bitrate limits: the one place they are set.

aiortc has no API for encoder bitrates: its VP8 and H264 encoders read module constants (start at
DEFAULT_BITRATE, then follow the receiver's REMB/TWCC estimate clamped to [MIN, MAX]). This module
sets those constants for the whole process, before any encoder is made. At 256^2 a talking head
needs far less than aiortc's defaults allow; a low cap keeps frames small and latency low.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc import rtcrtpsender
from aiortc.codecs import h264, vpx

CODECS = ("vp8", "h264")
EncodedNote = Callable[[float, float], None]  # (start, end) monotonic seconds of one encode


def set_max_bitrate(bits_per_second: int) -> None:
    """Cap both encoders at `bits_per_second` (and start them at no more than that)."""
    if bits_per_second < 100_000:
        raise ValueError(f"max bitrate {bits_per_second} b/s is below 100 kb/s: too low for video")
    for module in (vpx, h264):
        setattr(module, "MAX_BITRATE", bits_per_second)  # noqa: B010 (untyped module constants)
        setattr(module, "MIN_BITRATE", min(module.MIN_BITRATE, bits_per_second))  # noqa: B010
        setattr(module, "DEFAULT_BITRATE", min(module.DEFAULT_BITRATE, bits_per_second))  # noqa: B010


def max_bitrate() -> dict[str, int]:
    return {"vp8": vpx.MAX_BITRATE, "h264": h264.MAX_BITRATE}


class TimedEncoder:
    """An aiortc encoder that reports how long each picture's encode took: a frame whose
    `opaque` is an EncodedNote (set by the track, server/track.py) gets it called with the
    encode's start and end. Everything else passes through to the codec's own encoder."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def encode(self, frame: Any, force_keyframe: bool = False) -> Any:
        start = time.monotonic()
        out = self._inner.encode(frame, force_keyframe)
        note = getattr(frame, "opaque", None)
        if callable(note):
            note(start, time.monotonic())
        return out

    def pack(self, packet: Any) -> Any:
        return self._inner.pack(packet)

    @property
    def target_bitrate(self) -> int:  # aiortc sets it from the receiver's estimate
        return int(self._inner.target_bitrate)

    @target_bitrate.setter
    def target_bitrate(self, value: int) -> None:
        self._inner.target_bitrate = value


_codec_encoder = rtcrtpsender.get_encoder


def time_encoders() -> None:
    """Make every RTCRtpSender of this process encode through a TimedEncoder (idempotent).
    aiortc builds a sender's encoder with the module-level `get_encoder` on its first frame and
    has no hook for timing it."""

    def timed(codec: Any) -> Any:
        return TimedEncoder(_codec_encoder(codec))

    rtcrtpsender.get_encoder = timed
