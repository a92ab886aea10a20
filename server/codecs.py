"""Video bitrate limits: the one place they are set.

aiortc has no API for encoder bitrates: its VP8 and H264 encoders read module constants (start at
DEFAULT_BITRATE, then follow the receiver's REMB/TWCC estimate clamped to [MIN, MAX]). This module
sets those constants for the whole process, before any encoder is made. At 256^2 a talking head
needs far less than aiortc's defaults allow; a low cap keeps frames small and latency low.
"""

from __future__ import annotations

from aiortc.codecs import h264, vpx

CODECS = ("vp8", "h264")


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
