"""One viewer: a peer connection, its control state and data channel, its track and its frames.

Messages on the `control` channel are checked by `server.protocol`; a refused one is answered with an
`error` and changes nothing. Every accepted control goes to the pipeline (live mode: only the newest
one is rendered). Rendered frames come back through the bridge, get the probe's seq stamp when the
page asked for it, and go to the track. Once a second the page gets a `stats` message, which also
carries the state the server holds (`state`: the fields of a control message that set it).

A peer that vanishes without closing (a crashed tab, a lost network) is noticed by its silence:
every WebRTC receiver sends RTCP receiver reports about the video it gets, about once a second
(aiortc every 0.5-1.5 s, browsers every second), so `peer_silent` turns true after PEER_SILENCE_S
without one and the app closes the session. ICE consent (RFC 7675) would take 30 s, during which a
dead session keeps its encoder busy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpSender

from engine.controls import Controls, as_message
from engine.pipeline.dispatcher import Frame
from engine.pipeline.worker import JUMP_LIMIT
from server import probe, protocol
from server.bridge import Bridge
from server.budget import Budget
from server.floor import floor_picture
from server.track import AvatarTrack

STATS_PERIOD_S = 1.0
MESSAGE_RATE_HZ = 120.0  # data-channel messages per second a session may send (a 120 Hz display)
MESSAGE_BURST = 240  # ... and at most this many at once
RECENT_FRAMES = 90  # frames kept for the stats (3 s at 30 fps)
FAREWELL_S = 0.2  # how long a closing message gets to leave before the connection closes
PEER_SILENCE_S = 6.0  # no receiver report for this long: the peer is gone (several reports missed)
CONNECT_LIMIT_S = 30.0  # a peer that has not connected by then never will (browsers give up too)
LOG = logging.getLogger(__name__)


class Session:
    """State and lifecycle of one peer connection (created by the /offer handler)."""

    def __init__(
        self,
        sid: str,
        pc: RTCPeerConnection,
        bridge: Bridge,
        names: Sequence[str],
        rest: Controls,
        floor: bool = False,
    ) -> None:
        """names: the avatar's expression names; rest: the state before the first control (the
        avatar's resting expression, `Avatar.rest`); floor: pictures from `server.floor` instead
        of the renderer (the WebRTC path's own latency)."""
        self.id = sid
        self.pc = pc
        self.bridge = bridge
        self.names = tuple(names)
        self.state = rest
        self.last_seq = -1
        self.probe = False
        self.channel: RTCDataChannel | None = None
        self.budget = Budget()
        self.track = AvatarTrack(bridge.resolution, self.budget)
        self.created = time.monotonic()
        self.recent: collections.deque[Frame] = collections.deque(maxlen=RECENT_FRAMES)
        self.errors_sent = 0
        self.rate_limited = 0  # messages dropped by the rate limit
        self.internal_errors = 0  # messages whose handling raised unexpectedly (logged)
        self.sender: RTCRtpSender | None = None  # set once the track is added to the connection
        self._heard = time.monotonic()  # when the peer last showed it is alive
        self._last_report: object = None
        self._allowance = float(MESSAGE_BURST)
        self._allowance_at = time.monotonic()
        self._rate_reported = 0
        self.closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.floor = floor
        self._floor_frames = 0
        self.pipeline_session = -1 if floor else bridge.open_session(self._deliver)
        # The first picture: the rest state, before any control arrives.
        self._submit(0, self.state)

    # ------------------------------------------------------------------ frames

    def _deliver(self, frame: Frame) -> None:
        if self.closed.is_set():
            return
        self.recent.append(frame)
        now = time.monotonic()
        self.budget.rendered(frame.seq, frame.submitted, frame.started, frame.finished, now)
        picture = probe.stamp(frame.image, frame.seq) if self.probe else frame.image
        self.track.push(picture, frame.seq)

    # ------------------------------------------------------------------ the data channel

    def attach(self, channel: RTCDataChannel) -> None:
        if channel.label != "control":
            LOG.warning("session %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel = channel
        channel.on("message", self.on_message)
        self._tasks.append(asyncio.ensure_future(self._stats_loop()))

    def _within_rate(self) -> bool:
        """Token bucket: MESSAGE_RATE_HZ on average, MESSAGE_BURST at once."""
        now = time.monotonic()
        self._allowance = min(
            float(MESSAGE_BURST), self._allowance + (now - self._allowance_at) * MESSAGE_RATE_HZ
        )
        self._allowance_at = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True

    def on_message(self, text: str | bytes) -> None:
        arrived = time.monotonic()
        if not self._within_rate():
            self.rate_limited += 1  # dropped unread; reported once a second by the stats loop
            return
        try:
            self._handle(text, arrived)
        except Exception:  # a bug must cost this message, never the connection's SCTP loop
            self.internal_errors += 1
            LOG.exception("session %s: handling a message failed", self.id)
            self._send(protocol.error("the server failed to handle this message (logged)"))

    def _handle(self, text: str | bytes, arrived: float) -> None:
        """One message, which came in at `arrived` (time.monotonic())."""
        try:
            message = protocol.parse(text, self.state, self.names, self.last_seq)
        except protocol.ProtocolError as exc:
            self.errors_sent += 1
            self._send(protocol.error(str(exc), exc.seq))
            return
        if isinstance(message, protocol.ControlMessage):
            self.state, self.last_seq = message.controls, message.seq
            self.budget.received(message.seq, arrived)
            self._submit(message.seq, message.controls)
        elif isinstance(message, protocol.Ping):
            self._send(protocol.pong(message.t))
        elif isinstance(message, protocol.Probe):
            self.probe = message.on

    def _submit(self, seq: int, controls: Controls) -> None:
        if not self.floor:
            self.bridge.submit(self.pipeline_session, seq, controls)
            return
        submitted = time.monotonic()
        picture = floor_picture(seq, self.bridge.resolution)
        finished = time.monotonic()
        self._floor_frames += 1
        frame = Frame(
            session=-1,
            frame=self._floor_frames,
            seq=seq,
            image=picture,
            generated=True,
            distance=0,
            worker=-1,
            submitted=submitted,
            started=submitted,
            finished=finished,
            cache_ready=submitted,
            stages_ms={"pattern": (finished - submitted) * 1000.0},
        )
        self._deliver(frame)

    def _send(self, text: str) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)

    async def _stats_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(STATS_PERIOD_S)
            if not self.floor:
                for error in self.bridge.pipeline.errors(self.pipeline_session):
                    self._send(protocol.error(error))
            if self.rate_limited > self._rate_reported:
                dropped = self.rate_limited - self._rate_reported
                self._rate_reported = self.rate_limited
                self._send(
                    protocol.error(
                        f"rate limit: {dropped} messages dropped (at most {MESSAGE_RATE_HZ:g}/s, "
                        f"bursts of {MESSAGE_BURST})"
                    )
                )
            self._send(protocol.stats(self.stats()))

    def stats(self) -> dict[str, Any]:
        """fps and stage timings over the recent frames; what share of them were warped, and from
        how many frames back on average."""
        frames = list(self.recent)
        out: dict[str, Any] = {
            "frames": len(frames),
            "seq": self.last_seq,
            "probe": self.probe,
            "errors_sent": self.errors_sent,
            "rate_limited": self.rate_limited,
            "internal_errors": self.internal_errors,
            "state": as_message(self.state, self.names),
            "source": "floor" if self.floor else "avatar",
        }
        if len(frames) >= 2:
            span = frames[-1].finished - frames[0].finished
            out["fps"] = round((len(frames) - 1) / span, 2) if span > 0 else None
            out["latency_ms"] = round(statistics.median(f.latency_ms for f in frames), 2)
            warped = [f.distance for f in frames if not f.generated]
            out["warped"] = round(len(warped) / len(frames), 3)
            # How far back the warps reach, in frames and in controls: the served quality falls
            # with both, and past the jump limit a warp no longer draws the controls (README).
            out["warp_distance"] = round(statistics.mean(warped), 2) if warped else None
            ages = sorted(f.age_ms for f in frames if not f.generated)
            out["warp_age_ms"] = round(statistics.mean(ages), 1) if ages else None
            out["warp_age_ms_p95"] = (
                round(ages[min(len(ages) - 1, int(0.95 * len(ages)))], 1) if ages else None
            )
            drift = sorted(f.drift for f in frames)
            out["drift_p95"] = round(drift[min(len(drift) - 1, int(0.95 * len(drift)))], 3)
            out["beyond_jump_limit"] = round(sum(d > JUMP_LIMIT for d in drift) / len(drift), 3)
            stages: dict[str, list[float]] = {}
            for f in frames:
                for name, ms in f.stages_ms.items():
                    stages.setdefault(name, []).append(ms)
            out["stages_ms"] = {k: round(statistics.median(v), 2) for k, v in stages.items()}
        # Control arrival -> encoded, stage by stage (server.budget), and new pictures sent.
        out["budget_ms"] = self.budget.medians_ms()
        out["new_pictures"] = self.track.new_pictures
        return out

    # ------------------------------------------------------------------ liveness

    async def peer_silent(self) -> bool:
        """True once a connected peer has sent no RTCP receiver report for PEER_SILENCE_S (the
        clock starts when it connects), or when it has not connected within CONNECT_LIMIT_S: the
        peer has vanished without closing."""
        if self.sender is None or self.closed.is_set():
            return False
        now = time.monotonic()
        if self.pc.connectionState != "connected":
            self._heard = now  # silence counts from the connection, not from the offer
            return now - self.created > CONNECT_LIMIT_S
        report = await self.sender.getStats()
        # aiortc stamps remote-inbound-rtp with the arrival time of the newest receiver report.
        latest = next(
            (s.timestamp for s in report.values() if s.type == "remote-inbound-rtp"), None
        )
        if latest is not None and latest != self._last_report:
            self._last_report, self._heard = latest, now
            return False
        return now - self._heard > PEER_SILENCE_S

    # ------------------------------------------------------------------ closing

    async def close(self, farewell: str | None = None) -> None:
        """End the session: stop its tasks, free its pipeline state, close the connection. A
        `farewell` goes to the page first as an `error` (why the server ends it)."""
        if self.closed.is_set():
            return
        if farewell is not None and self.channel is not None and self.channel.readyState == "open":
            self._send(protocol.error(f"session ended: {farewell}"))
            await asyncio.sleep(FAREWELL_S)  # let SCTP deliver it before the connection goes
        self.closed.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.floor:
            self.bridge.close_session(self.pipeline_session)
        self.track.stop()
        await self.pc.close()
