"""Where a frame's time goes on the server: from its control's arrival on the data channel to its
encoded packets, stage by stage, per session.

    receive       control message arrives -> parsed and submitted to the pipeline
    queue         submitted -> a worker starts the frame (waits for a free worker, or its cache)
    render        worker: inputs, warp or generator, picture into shared memory
    copy_out      picture in shared memory -> on the event loop (ring read, thread hop)
    wait_encoder  on the loop -> the encoder takes it (it encodes one picture at a time)
    encode        the codec's encode (VP8 / H.264, in the loop's executor)

The browser adds what happens after (network, jitter buffer, decode, display; web/app.js) and
`bench.browser --budget` stacks the p50 of every stage. Times are time.monotonic(), which the
worker processes share with this one.
"""

from __future__ import annotations

import collections
import statistics
import threading
from dataclasses import dataclass, field

SERVER_STAGES = ("receive", "queue", "render", "copy_out", "wait_encoder", "encode")
KEPT = 300  # frames whose stage times are kept (10 s at 30 fps)
OPEN_LIMIT = 64  # controls or pictures waiting for their later times; older ones are dropped


@dataclass
class _Open:
    """The times of one seq known so far (monotonic seconds)."""

    received: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    delivered: float | None = None
    pulled: float | None = None


class Budget:
    """One session's recent frames, stage by stage. `encoded` is called from the encoder's
    thread; everything else from the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: collections.OrderedDict[int, _Open] = collections.OrderedDict()
        self._done: collections.deque[dict[str, float]] = collections.deque(maxlen=KEPT)

    def _entry(self, seq: int) -> _Open:
        entry = self._open.get(seq)
        if entry is None:
            entry = self._open[seq] = _Open()
            while len(self._open) > OPEN_LIMIT:
                self._open.popitem(last=False)
        return entry

    def received(self, seq: int, at: float) -> None:
        with self._lock:
            self._entry(seq).received = at

    def rendered(
        self, seq: int, submitted: float, started: float, finished: float, delivered: float
    ) -> None:
        """The pipeline's times of the picture of `seq`, delivered to the loop at `delivered`."""
        with self._lock:
            entry = self._entry(seq)
            if entry.received is not None:
                entry.stages["receive"] = max(0.0, submitted - entry.received)
            entry.stages["queue"] = started - submitted
            entry.stages["render"] = finished - started
            entry.stages["copy_out"] = delivered - finished
            entry.delivered = delivered

    def pulled(self, seq: int, at: float) -> None:
        """The encoder took the new picture of `seq`."""
        with self._lock:
            entry = self._open.get(seq)
            if entry is not None and entry.delivered is not None:
                entry.stages["wait_encoder"] = at - entry.delivered
                entry.pulled = at

    def encoded(self, seq: int, start: float, end: float) -> None:
        """The codec encoded that picture from `start` to `end` (any thread)."""
        with self._lock:
            entry = self._open.pop(seq, None)
            if entry is None or entry.pulled is None:
                return
            entry.stages["encode"] = end - start
            self._done.append({k: v * 1000.0 for k, v in entry.stages.items()})

    def medians_ms(self) -> dict[str, float]:
        """p50 of every stage over the recent frames that went all the way through (ms)."""
        with self._lock:
            done = list(self._done)
        out = {}
        for stage in SERVER_STAGES:
            values = [d[stage] for d in done if stage in d]
            if values:
                out[stage] = round(statistics.median(values), 2)
        return out

    def frames(self) -> int:
        with self._lock:
            return len(self._done)
