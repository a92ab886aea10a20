"""server.protocol: every message kind, and a clear refusal naming the problem for bad ones."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings

from bench.fuzz import message_strategy
from engine.controls import neutral
from engine.head.default import build_default_head
from server import protocol
from server.protocol import ControlMessage, Ping, Probe, ProtocolError

NAMES = build_default_head().expression_names
STATE = neutral(NAMES)


def _parse(message: object, last_seq: int = 0) -> protocol.Message:
    return protocol.parse(json.dumps(message), STATE, NAMES, last_seq)


def test_control_merges_into_the_state() -> None:
    msg = _parse({"type": "control", "seq": 5, "t": 12.5, "expression": {"jawOpen": 0.7}})
    assert isinstance(msg, ControlMessage) and msg.seq == 5 and msg.t == 12.5
    assert msg.controls.expression[NAMES.index("jawOpen")] == 0.7
    turned = protocol.parse(
        json.dumps({"type": "control", "seq": 6, "t": 13, "pose": {"yaw": 20}}),
        msg.controls,
        NAMES,
        5,
    )
    assert isinstance(turned, ControlMessage)
    assert turned.controls.yaw == 20 and turned.controls.expression == msg.controls.expression


def test_ping_and_probe() -> None:
    assert _parse({"type": "ping", "t": 3.25}) == Ping(t=3.25)
    assert _parse({"type": "probe", "on": True}) == Probe(on=True)


@pytest.mark.parametrize(
    ("text", "message", "seq"),
    [
        ("{nope", "not JSON", None),
        ("[1]", "JSON object", None),
        ('{"type": "dance"}', "unknown message type", None),
        ('{"type": "control", "seq": 1, "t": 0, "expression": {"jawOpen": 3}}', "jawOpen", 1),
        ('{"type": "control", "seq": 2, "t": 0, "expression": {"wink": 1}}', "wink", 2),
        ('{"type": "control", "seq": 3, "t": 0, "pose": {"yaw": 1000}}', "pose.yaw", 3),
        ('{"type": "control", "seq": 4, "t": 0, "pose": "left"}', "pose", 4),
        ('{"type": "control", "seq": 0, "t": 0}', "not newer", 0),
        ('{"type": "control", "seq": -1, "t": 0}', "seq", None),
        ('{"type": "control", "seq": "7", "t": 0}', "seq", None),
        ('{"type": "control", "seq": 8, "t": NaN}', "t must be a finite", 8),
        ('{"type": "control", "seq": 9, "t": 0, "colour": 1}', "colour", 9),
        ('{"type": "ping"}', "t must be", None),
        ('{"type": "probe", "on": "yes"}', "probe.on", None),
        ('{"type": "ping", "t": ' + "1" * 5000 + "}", "digits", None),  # past int's 4300 digits
    ],
)
def test_bad_messages_name_the_problem(text: str, message: str, seq: int | None) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        protocol.parse(text, STATE, NAMES, 0)
    assert info.value.seq == seq


def test_binary_and_oversized_messages_are_refused() -> None:
    with pytest.raises(ProtocolError, match="text"):
        protocol.parse(b"{}", STATE, NAMES, 0)
    with pytest.raises(ProtocolError, match="characters"):
        protocol.parse(" " * (protocol.MAX_MESSAGE_CHARS + 1), STATE, NAMES, 0)


def test_server_messages() -> None:
    assert json.loads(protocol.error("bad", 3)) == {"type": "error", "message": "bad", "seq": 3}
    assert json.loads(protocol.error("bad")) == {"type": "error", "message": "bad"}
    assert json.loads(protocol.pong(1.5)) == {"type": "pong", "t": 1.5}
    assert json.loads(protocol.stats({"fps": 30}))["type"] == "stats"


# ----------------------------------------------------------------------------- fuzzing

MESSAGE = message_strategy(NAMES)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGE)
def test_any_message_is_accepted_whole_or_refused_with_a_reason(text: str | bytes) -> None:
    try:
        message = protocol.parse(text, STATE, NAMES, 0)
    except ProtocolError as exc:
        assert str(exc)  # a reason, never an empty refusal
        return
    if isinstance(message, ControlMessage):  # accepted: a complete, valid state
        assert message.seq > 0 and len(message.controls.expression) == len(NAMES)
        assert all(0.0 <= w <= 1.0 for w in message.controls.expression)
        assert all(
            math.isfinite(v)
            for v in (message.controls.yaw, message.controls.pitch, message.controls.roll)
        )
