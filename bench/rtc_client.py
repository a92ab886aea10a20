"""A Python WebRTC viewer of the avatar server (aiortc): what the tests and `bench.soak` use to
connect, drive the avatar over the data channel and read frames back with their probe seq."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from server import probe
from server.ice import use_loopback_only

WAIT_S = 30.0


@dataclass
class Received:
    """A decoded picture, when it arrived (time.monotonic) and the seq its probe code reads."""

    image: np.ndarray
    arrived: float
    seq: int | None


@dataclass
class Viewer:
    """One viewer's side of a call: the peer connection, its channel, what came back."""

    pc: RTCPeerConnection
    channel: RTCDataChannel
    frames: asyncio.Queue[Received]
    messages: asyncio.Queue[dict[str, Any]]
    session: str
    sent: dict[int, float] = field(default_factory=dict)  # seq -> time.monotonic() when sent
    seq: int = 0
    events: str | None = None  # where the server tells why the session ended (server-sent events)
    node: str | None = None  # the render node a cluster's front placed it on
    offer_ms: float = 0.0  # the offer's round trip (sent -> answer read)

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    def control(self, **fields: Any) -> int:
        """Send a control with the next seq; returns the seq."""
        self.seq += 1
        self.sent[self.seq] = time.monotonic()
        self.send({"type": "control", "seq": self.seq, "t": time.time() * 1000, **fields})
        return self.seq

    async def message(self, kind: str, timeout: float = WAIT_S) -> dict[str, Any]:
        while True:
            m = await asyncio.wait_for(self.messages.get(), timeout)
            if m["type"] == kind:
                return m

    async def frame_with_seq(self, seq: int, timeout: float = WAIT_S) -> Received:
        """The first picture whose probe code reads `seq` (the code carries seq mod 2^20)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = await asyncio.wait_for(self.frames.get(), timeout)
            if got.seq == seq % probe.SEQ_MODULO:
                return got
        raise TimeoutError(f"no frame stamped {seq}")

    async def close(self) -> None:
        await self.pc.close()


Exchange = Callable[[dict[str, str]], Awaitable[dict[str, Any]]]  # offer -> answer


async def connect(
    http: aiohttp.ClientSession | Any, url: str = "", source: str = "avatar", **headers: str
) -> Viewer:
    """Offer a receive-only video transceiver and a `control` channel to `url`/offer through
    `http` (an aiohttp ClientSession, or aiohttp's TestClient with url ""); wait until open."""

    async def post(offer: dict[str, str]) -> dict[str, Any]:
        response = await http.post(f"{url}/offer", json=offer, headers=headers)
        if response.status != 200:
            raise RuntimeError(f"offer refused: {response.status} {await response.text()}")
        answer: dict[str, Any] = await response.json()
        return answer

    return await connect_with(post, source)


async def connect_with(exchange: Exchange, source: str = "avatar") -> Viewer:
    """As `connect`, with the offer answered by `exchange` (an HTTP POST, or a call straight to a
    cluster's render node); `Viewer.offer_ms` is how long the exchange took."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("control")
    pc.addTransceiver("video", direction="recvonly")
    frames: asyncio.Queue[Received] = asyncio.Queue()
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    opened = asyncio.Event()

    async def pump(track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                image = frame.to_ndarray(format="rgb24")
                frames.put_nowait(Received(image, time.monotonic(), probe.read(image)))
        except MediaStreamError:
            pass

    pc.on("track", lambda track: asyncio.ensure_future(pump(track)))
    channel.on("open", opened.set)
    channel.on("message", lambda text: messages.put_nowait(json.loads(text)))
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
    if source != "avatar":  # "floor": the synthetic pattern (server/floor.py)
        offer["source"] = source
    asked = time.perf_counter()
    try:
        answer = await exchange(offer)
    except BaseException:
        await pc.close()
        raise
    offer_ms = (time.perf_counter() - asked) * 1000.0
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await asyncio.wait_for(opened.wait(), WAIT_S)
    return Viewer(
        pc,
        channel,
        frames,
        messages,
        answer["session"],
        events=answer.get("events"),
        node=answer.get("node"),
        offer_ms=offer_ms,
    )


async def ended_reason(
    http: aiohttp.ClientSession | Any, path: str, url: str = "", **headers: str
) -> str:
    """Wait on the session's event stream (`Viewer.events`) for why it ended."""
    response = await http.get(f"{url}{path}", headers=headers)
    if response.status != 200:
        raise RuntimeError(f"events refused: {response.status} {await response.text()}")
    text = ""
    async for chunk in response.content.iter_any():
        text += chunk.decode()
        head, sep, _ = text.partition("\n\n")
        if sep and "event: ended" in head:
            data = head.split("data: ", 1)[1]
            reason: str = json.loads(data)["reason"]
            response.release()
            return reason
        if sep:
            text = text[len(head) + 2 :]  # a keep-alive comment
    raise RuntimeError("the event stream closed without saying why the session ended")


async def _stream_until_killed(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        viewer = await connect(http, url)
        await asyncio.wait_for(viewer.frames.get(), WAIT_S)
        print(f"streaming {viewer.session}", flush=True)
        await asyncio.Event().wait()  # until the process is killed: it never says goodbye


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.rtc_client URL`: connect, print "streaming SESSION" once a picture has
    arrived, then stream until killed (bench.churn's client that vanishes without closing)."""
    parser = argparse.ArgumentParser(prog="python -m bench.rtc_client", description=main.__doc__)
    parser.add_argument("url")
    args = parser.parse_args(argv)
    if urllib.parse.urlsplit(args.url).hostname in ("127.0.0.1", "localhost"):
        use_loopback_only()  # a server on this machine: no other interface is needed (or may exist)
    asyncio.run(_stream_until_killed(args.url.rstrip("/")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
