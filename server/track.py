"""The avatar's outgoing video track: the freshest rendered picture, as fast as the encoder asks.

`recv` returns at once when a new picture is waiting (it never sleeps to keep a schedule when it is
behind), otherwise waits for one up to a frame period and then re-sends the last picture, so the
receiver's jitter buffer keeps flowing while the avatar is idle. Timestamps come from the monotonic
clock on the 90 kHz RTP video clock.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from server.budget import Budget

VIDEO_CLOCK_HZ = 90_000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_HZ)
FRAME_PERIOD_S = 1 / 30  # 30 fps: the longest wait before the last picture is sent again
WAITING_GREY = 96  # the picture before the first render arrives


class AvatarTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, resolution: int, budget: Budget | None = None) -> None:
        super().__init__()
        self._picture = np.full((resolution, resolution, 3), WAITING_GREY, dtype=np.uint8)
        self._seq: int | None = None  # the seq of the picture waiting to be sent, when new
        self._budget = budget
        self._new = asyncio.Event()
        self._start: float | None = None
        self._last_pts = -1
        self.sent = 0
        self.repeats = 0
        self.new_pictures = 0

    def push(self, picture: np.ndarray, seq: int | None = None) -> None:
        """A new (H, W, 3) uint8 picture of control `seq` (called on the event loop)."""
        self._picture = picture
        self._seq = seq
        self._new.set()

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._new.is_set():
            try:
                await asyncio.wait_for(self._new.wait(), FRAME_PERIOD_S)
            except TimeoutError:
                self.repeats += 1
        fresh = self._new.is_set()
        self._new.clear()
        now = time.monotonic()
        if self._start is None:
            self._start = now
        pts = max(int((now - self._start) * VIDEO_CLOCK_HZ), self._last_pts + 1)
        self._last_pts = pts
        frame = VideoFrame.from_ndarray(self._picture, format="rgb24")
        frame.pts = pts
        frame.time_base = TIME_BASE
        if fresh and self._budget is not None and self._seq is not None:
            # The encoder (server.codecs.TimedEncoder) reports this picture's encode time.
            budget, seq = self._budget, self._seq
            budget.pulled(seq, now)
            frame.opaque = lambda start, end: budget.encoded(seq, start, end)
        self.sent += 1
        if fresh:
            self.new_pictures += 1
        return frame
