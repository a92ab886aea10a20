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

from engine.controls import Controls, short_repr, to_float, update

MAX_MESSAGE_CHARS = 16_384  # a full control message is ~2 KB; aiortc allows 256 KiB
MAX_STATE_CHARS = 8192  # a whole state (all 52 expressions, pose, view) is ~2 KB of JSON
MAX_SEQ = 2**53 - 1  # the browser's Number.MAX_SAFE_INTEGER: a seq JavaScript can count to


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
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a finite number, got {type(value).__name__}")
    x = to_float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return x


def parse(text: str | bytes, state: Controls, names: Sequence[str], last_seq: int) -> Message:
    """One data-channel message -> a Message; `state` is the session's current controls (fields not
    sent keep their values) and `last_seq` the newest accepted seq (seq must increase)."""
    if isinstance(text, bytes):
        raise ProtocolError("messages must be text (JSON), not binary")
    message = _json_object(text, "message", MAX_MESSAGE_CHARS)
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
        valid = isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_SEQ
        raise ProtocolError(str(exc), seq if valid else None) from exc
    raise ProtocolError(f"unknown message type {short_repr(kind)}: expected control, ping or probe")


def parse_state(text: str, names: Sequence[str], base: Controls) -> Controls:
    """A whole state as JSON ({"expression": {...}, "pose": {...}, "view": {...}}, the fields of a
    control message; `GET /still.png?state=`) -> Controls; fields not given keep their value in
    `base` (the avatar's rest, `Avatar.rest`)."""
    state = _json_object(text, "state", MAX_STATE_CHARS)
    try:
        _only(state, {"expression", "pose", "view"}, "state")
        return _apply(base, names, state)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc


def _json_object(text: str, what: str, limit: int) -> dict[str, Any]:
    if len(text) > limit:
        raise ProtocolError(f"{what} of {len(text)} characters, more than {limit}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc.msg} at character {exc.pos}") from exc
    except RecursionError as exc:  # '[[[[...' within the size limit is still too deep to decode
        raise ProtocolError(f"{what} is nested too deeply to be a control state") from exc
    except ValueError as exc:  # an integer of more than 4300 digits (Python's int-to-str limit)
        raise ProtocolError(f"{what} is not JSON we accept: {short_repr(str(exc), 80)}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _apply(state: Controls, names: Sequence[str], fields: dict[str, Any]) -> Controls:
    """`state` with the expression, pose and view `fields` of a message or state merged in."""
    return update(
        state,
        names,
        expression=fields.get("expression"),
        pose=fields.get("pose"),
        view=fields.get("view"),
    )


def _only(message: dict[str, Any], allowed: set[str], what: str | None = None) -> None:
    unknown = set(message) - allowed
    if unknown:
        where = what or f"a {message['type']} message"
        raise ValueError(f"unknown fields {short_repr(sorted(unknown))} in {where}")


def _control(
    message: dict[str, Any], state: Controls, names: Sequence[str], last_seq: int
) -> ControlMessage:
    _only(message, {"type", "seq", "t", "expression", "pose", "view"})
    seq = message.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        shown = seq if isinstance(seq, int) and abs(seq) < 10**20 else type(seq).__name__
        raise ValueError(f"seq must be an integer in [0, 2^53 - 1], got {shown!r}")
    if seq <= last_seq:
        raise ProtocolError(f"seq {seq} is not newer than the last accepted {last_seq}", seq)
    t = _finite("t", message.get("t"))
    try:
        controls = _apply(state, names, message)
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
