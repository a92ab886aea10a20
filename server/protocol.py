"""The control protocol on the `control` data channel (DESIGN.md, "Controls"): parsing and checking
the browser's messages, and building the server's.

From the browser: `control` {seq, t, expression?, pose?, view?}, `ping` {t}, `probe` {on}. From the
server: `error` {message, seq?}, `pong` {t}, `stats` {...}. A message that fails any check raises
`ProtocolError` naming the problem (and the `seq` it refers to when it has one); nothing of it is
applied, and the session goes on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.controls import Controls, update

MAX_MESSAGE_CHARS = 16_384  # a full control message is ~2 KB; aiortc allows 256 KiB


class ProtocolError(ValueError):
    """A refused message; `seq` is the control's sequence number when it had a valid one."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class ControlMessage:
    """A validated `control`: the new state (old state merged with the fields sent)."""

    seq: int
    t: float
    controls: Controls


@dataclass(frozen=True)
class Ping:
    t: float


@dataclass(frozen=True)
class Probe:
    on: bool


Message = ControlMessage | Ping | Probe


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def parse(text: str | bytes, state: Controls, names: Sequence[str], last_seq: int) -> Message:
    """One data-channel message -> a Message; `state` is the session's current controls (fields not
    sent keep their values) and `last_seq` the newest accepted seq (seq must increase)."""
    if isinstance(text, bytes):
        raise ProtocolError("messages must be text (JSON), not binary")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"message of {len(text)} characters, more than {MAX_MESSAGE_CHARS}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON: {exc.msg} at character {exc.pos}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object")
    kind = message.get("type")
    try:
        if kind == "control":
            return _control(message, state, names, last_seq)
        if kind == "ping":
            _only(message, {"type", "t"})
            return Ping(t=_finite("t", message.get("t")))
        if kind == "probe":
            _only(message, {"type", "on"})
            if not isinstance(message.get("on"), bool):
                raise ValueError("probe.on must be true or false")
            return Probe(on=message["on"])
    except ProtocolError:
        raise
    except ValueError as exc:
        seq = message.get("seq") if kind == "control" else None
        valid = isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
        raise ProtocolError(str(exc), seq if valid else None) from exc
    raise ProtocolError(f"unknown message type {kind!r}: expected control, ping or probe")


def _only(message: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(message) - allowed
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} in a {message['type']} message")


def _control(
    message: dict[str, Any], state: Controls, names: Sequence[str], last_seq: int
) -> ControlMessage:
    _only(message, {"type", "seq", "t", "expression", "pose", "view"})
    seq = message.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"seq must be a non-negative integer, got {seq!r}")
    if seq <= last_seq:
        raise ProtocolError(f"seq {seq} is not newer than the last accepted {last_seq}", seq)
    t = _finite("t", message.get("t"))
    try:
        controls = update(
            state,
            names,
            expression=message.get("expression"),
            pose=message.get("pose"),
            view=message.get("view"),
        )
    except ValueError as exc:
        raise ProtocolError(str(exc), seq) from exc
    return ControlMessage(seq=seq, t=t, controls=controls)


def error(message: str, seq: int | None = None) -> str:
    payload: dict[str, Any] = {"type": "error", "message": message}
    if seq is not None:
        payload["seq"] = seq
    return json.dumps(payload)


def pong(t: float) -> str:
    return json.dumps({"type": "pong", "t": t})


def stats(payload: dict[str, Any]) -> str:
    return json.dumps({"type": "stats", **payload})
