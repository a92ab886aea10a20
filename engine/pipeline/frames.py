"""What a session gets back: a frame copied out of its worker's shared-memory ring, so it outlives
the slot it was written to and can be handed to another thread (the server's event loop) or kept
for as long as the caller likes, with the timings that say where its latency went.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One output frame of a session.

    image (H, W, 3) uint8 RGB (a copy: the ring slot is free again); frame: the session's output
    index (increasing, with gaps where frames were lost); seq: the newest control it reflects;
    generated: the generator's picture (drawn for this frame, or its cache's own where the
    frame's controls are exactly the cache's), else warped from a cache `distance` frames older;
    times are time.monotonic() seconds; stages_ms: the worker's stage timings.
    """

    session: int
    frame: int
    seq: int
    image: np.ndarray
    generated: bool
    distance: int
    worker: int
    submitted: float
    started: float
    finished: float
    cache_ready: float
    stages_ms: dict[str, float]
    drift: float = 0.0  # how far its controls lie from its cache's (engine.controls.change)
    cache_submitted: float = 0.0  # when the control its cache was started from arrived

    @property
    def age_ms(self) -> float:
        """A warped frame's cache's age when its control arrived: the time between the two
        controls (what a warp reaches across; 0 for the generator's pictures). Live only: replay
        submits its controls at once. A still control rendered again counts from its new turn."""
        if self.generated:
            return 0.0
        return max(0.0, (self.submitted - self.cache_submitted) * 1000.0)

    @property
    def latency_ms(self) -> float:
        """Control submitted -> picture ready."""
        return (self.finished - self.submitted) * 1000.0
