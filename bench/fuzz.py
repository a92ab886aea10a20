"""Fuzz a live server's data channel: thousands of generated and hand-picked bad messages through a real
WebRTC connection, each one accounted for.

    python -m bench.fuzz [--url URL] [--messages N] [--seed S] --json OUT

Messages come from hypothesis strategies (`message_strategy`: random JSON, control messages with
wrong, missing, NaN, infinite, huge or unknown fields, wrong types, long strings, binary) and from
`hand_picked` (invalid JSON, missing and replayed seq, over-size, deep nesting, ...). After each one
a marker ping goes out; the data channel is ordered, so whatever the server sends before the
marker's pong is its answer to that message. A local model (`server.protocol.parse` over the state
the accepted messages built) says what the answer must be: an `error` for a refused message, a
`pong` for a ping, nothing for an accepted control or probe; `mismatches` counts disagreements.
Messages are paced below the session's rate limit; a separate burst then goes far over it, and
every message of it must be either answered or counted as dropped by the limit. Every
`CHECKPOINT_EVERY` messages (and at the end) the fuzzer waits for the server's `stats`, whose
`state` must equal the model's (so no refused message changed anything, not even in part), and
sends a valid control whose picture must come back (the session still streams).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bench import rtc_client
from bench.local_server import run_against, server_parser, write_report
from engine.controls import Controls, as_message, neutral, update
from server import protocol
from server.session import MESSAGE_BURST, MESSAGE_RATE_HZ, STATS_PERIOD_S

PACE_HZ = 0.8 * MESSAGE_RATE_HZ  # messages per second sent (each fuzz message and its marker)
WINDOW = 16  # fuzz messages whose answers may be outstanding at once
CHECKPOINT_EVERY = 500
BURST = 3 * MESSAGE_BURST  # the over-the-limit burst: three times what the bucket holds
NEXT_SEQ = "__next_seq__"  # stands for the session's next seq; replaced when the message is sent
MARKER_T = -1.0e12  # marker pings carry t = MARKER_T - i (fuzzed pings almost never do)
WAIT_S = 30.0

HUGE_INTS = st.sampled_from([10**400, -(10**400), 2**53, 2**63, 2**64 + 1])
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30) | HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def message_strategy(names: Sequence[str]) -> st.SearchStrategy[str | bytes]:
    """Data-channel messages, mostly bad: control messages over the avatar's expression `names`
    with any field wrong or missing, other message types, any JSON, any text, binary."""
    name = st.sampled_from(list(names)) | st.text(max_size=20)
    control = st.fixed_dictionaries(
        {"type": st.just("control")},
        optional={
            "seq": st.integers(min_value=-5, max_value=10**12) | HUGE_INTS | JSON,
            "t": st.floats(allow_nan=True, allow_infinity=True) | JSON,
            "expression": st.dictionaries(name, st.floats(allow_nan=True) | JSON, max_size=6)
            | JSON,
            "pose": st.dictionaries(
                st.sampled_from(["yaw", "pitch", "roll", "x"]), JSON_LEAVES, max_size=4
            )
            | JSON,
            "view": st.dictionaries(st.sampled_from(["yaw", "pitch", "z"]), JSON_LEAVES, max_size=3)
            | JSON,
        },
    )
    # Near misses: the next seq (filled in when sent), known names and keys, values around their
    # ranges; about half are valid, so acceptance and partial-update paths are exercised too.
    plausible = st.fixed_dictionaries(
        {
            "type": st.just("control"),
            "seq": st.just(NEXT_SEQ),
            "t": st.floats(-1e6, 1e13),
        },
        optional={
            "expression": st.dictionaries(
                st.sampled_from(list(names)), st.floats(-0.2, 1.2), max_size=8
            ),
            "pose": st.dictionaries(
                st.sampled_from(["yaw", "pitch", "roll"]), st.floats(-60.0, 60.0), max_size=3
            ),
            "view": st.dictionaries(
                st.sampled_from(["yaw", "pitch"]), st.floats(-90.0, 90.0), max_size=2
            ),
        },
    )
    ping = st.fixed_dictionaries(
        {"type": st.just("ping"), "t": st.floats(allow_nan=True, allow_infinity=True)}
    )
    other = st.fixed_dictionaries(
        {"type": st.sampled_from(["ping", "probe", "pong", "stats", "error", ""])},
        optional={"t": JSON, "on": JSON},
    )
    return st.one_of(
        control.map(lambda m: json.dumps(m, allow_nan=True)),
        plausible.map(json.dumps),
        ping.map(lambda m: json.dumps(m, allow_nan=True)),
        other.map(lambda m: json.dumps(m, allow_nan=True)),
        JSON.map(lambda v: json.dumps(v, allow_nan=True)),
        st.text(max_size=200),
        st.binary(max_size=50),
    )


T = TypeVar("T")


def draw(strategy: st.SearchStrategy[T], count: int, random_seed: int) -> list[T]:
    """`count` examples of `strategy`, drawn by hypothesis's generator (reproducible with
    `random_seed`); for inputs that are sent somewhere rather than passed to a test function."""
    drawn: list[T] = []

    @seed(random_seed)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn[:count]


def generate(names: Sequence[str], count: int, random_seed: int) -> list[str | bytes]:
    """`count` data-channel messages drawn from `message_strategy(names)`."""
    return draw(message_strategy(names), count, random_seed)


def hand_picked(names: Sequence[str]) -> list[str | bytes]:
    """The classic bad messages, each named in the issue, plus a few valid ones between them (so
    that replayed and decreasing seqs have something to repeat)."""
    first = names[0]
    limit = protocol.MAX_MESSAGE_CHARS

    def control(seq: Any, **fields: Any) -> str:
        return json.dumps({"type": "control", "seq": seq, "t": 0, **fields}, allow_nan=True)

    return [
        "",
        "{",
        "not json at all",
        "null",
        "[]",
        "42",
        '"control"',
        "{}",
        '{"type": null}',
        '{"type": "control"}',  # missing seq
        '{"type": "control", "t": 0, "pose": {"yaw": 10}}',  # missing seq, otherwise valid
        control(1_000_001, pose={"yaw": 5}),  # valid
        control(1_000_001, pose={"yaw": 6}),  # replayed seq
        control(1_000_000, pose={"yaw": 7}),  # decreasing seq
        control(1_000_002, pose={"yaw": float("nan")}),
        control(1_000_003, pose={"yaw": float("inf")}),
        control(1_000_004, pose={"pitch": -float("inf")}),
        control(1_000_005, pose={"yaw": 10**400}),
        control(1_000_006, pose={"yaw": 1e308}),
        control(1_000_007, expression={first: 1e-320}),  # a denormal: valid, tiny
        control(1_000_008, expression={"notAnExpression": 0.5}),
        control(1_000_009, expression={first: 0.5, "alsoUnknown": 0.5}),  # half valid: no part
        control(1_000_010, expression={first: "0.5"}),
        control(1_000_011, expression={first: True}),
        control(1_000_012, expression=[0.5]),
        control(1_000_013, pose={"yaw": 10}, view={"yaw": 999}),  # valid pose, bad view
        control(1_000_014, colour="red"),
        control(10**400),
        json.dumps({"type": "ping", "t": 0}).replace("0}", "1" * 5000 + "}"),  # > 4300 digits
        control(2**53),
        control(-1),
        control("12"),
        control(None),
        control(True),
        control(1.5),
        json.dumps({"type": "control", "seq": 1_000_015, "t": "now"}),
        json.dumps({"type": "ping"}),
        json.dumps({"type": "ping", "t": float("nan")}, allow_nan=True),
        json.dumps({"type": "probe", "on": 1}),
        json.dumps({"type": "probe", "on": True, "extra": 1}),
        json.dumps({"type": "x" * 10_000}),
        json.dumps({"type": "control", "seq": 1_000_016, "t": 0, "expression": {"y" * 9000: 1}}),
        " " * (limit + 1),  # over the size limit
        json.dumps({"type": "ping", "t": 1, "pad": "z" * limit}),
        "[" * 8000 + "]" * 8000,  # deep nesting within the size limit
        '{"a":' * 3000 + "1" + "}" * 3000,
        "\x00\x01\x02",  # control characters
        "\u202e{}",  # a right-to-left override before JSON
        b"",
        b"\x00\xff\xfe",
        json.dumps({"type": "control", "seq": 1_000_017, "t": 0}).encode(),  # valid, but binary
        control(1_000_018, expression={first: 0.25}, pose={"yaw": -12, "roll": 3}),  # valid
    ]


class Model:
    """What the server must hold: the state and last seq built by the accepted messages only."""

    def __init__(self, names: Sequence[str], rest: Mapping[str, float]) -> None:
        """rest: the avatar's resting expression (/api/avatar), where a session starts."""
        self.names = tuple(names)
        self.state: Controls = update(neutral(self.names), self.names, expression=rest)
        self.last_seq = -1

    def expect(self, message: str | bytes) -> tuple[str, Any]:
        """("error", text) | ("pong", t) | ("nothing", None), and the state moves on if accepted."""
        try:
            parsed = protocol.parse(message, self.state, self.names, self.last_seq)
        except protocol.ProtocolError as exc:
            return "error", str(exc)
        if isinstance(parsed, protocol.ControlMessage):
            self.state, self.last_seq = parsed.controls, parsed.seq
        if isinstance(parsed, protocol.Ping):
            return "pong", parsed.t
        return "nothing", None


class Pacer:
    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.next = time.monotonic()

    async def wait(self) -> None:
        self.next = max(self.next + self.period, time.monotonic() - 1.0)
        delay = self.next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _answers_until_marker(viewer: rtc_client.Viewer, marker: float) -> list[dict[str, Any]]:
    """The server's messages up to the marker ping's pong (stats, sent on a timer, left out)."""
    got: list[dict[str, Any]] = []
    while True:
        m = await asyncio.wait_for(viewer.messages.get(), WAIT_S)
        if m["type"] == "pong" and m.get("t") == marker:
            return got
        if m["type"] != "stats":
            got.append(m)


def _matches(expected: tuple[str, Any], answers: list[dict[str, Any]]) -> bool:
    kind, value = expected
    if kind == "nothing":
        return not answers
    if len(answers) != 1:
        return False
    answer = answers[0]
    if kind == "error":
        return answer["type"] == "error" and answer["message"] == value
    return answer["type"] == "pong" and answer["t"] == value


async def _checkpoint(viewer: rtc_client.Viewer, model: Model, report: dict[str, Any]) -> None:
    """Idle until a fresh `stats` (made after every message so far was handled): its state must be
    the model's; then a valid control must come back as a picture."""
    stats = await viewer.message("stats")
    report["checkpoints"] += 1
    if stats["state"] != as_message(model.state, model.names) or stats["seq"] != model.last_seq:
        report["state_mismatches"] += 1
    report["internal_errors"] = stats["internal_errors"]
    if model.last_seq < protocol.MAX_SEQ:
        viewer.send({"type": "probe", "on": True})  # a fuzzed probe message may have turned it off
        seq = model.last_seq + 1
        text = json.dumps({"type": "control", "seq": seq, "t": 0, "pose": {"yaw": seq % 30}})
        model.expect(text)
        viewer.channel.send(text)
        await viewer.frame_with_seq(seq)
        report["checkpoints_streaming"] += 1


async def fuzz(url: str, count: int, random_seed: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/avatar") as r:
            info = await r.json()
        names = info["expression_names"]
        start = time.monotonic()
        messages = hand_picked(names)
        messages += generate(names, max(0, count - len(messages)), random_seed)
        generate_s = time.monotonic() - start
        viewer = await rtc_client.connect(http, url)
        viewer.send({"type": "probe", "on": True})
        model = Model(names, info["rest_expression"])
        report: dict[str, Any] = {
            "messages": 0,
            "errors_returned": 0,
            "pongs": 0,
            "accepted_silently": 0,
            "mismatches": 0,
            "mismatch_examples": [],
            "checkpoints": 0,
            "checkpoints_streaming": 0,
            "state_mismatches": 0,
            "internal_errors": 0,
        }
        pacer = Pacer(PACE_HZ)
        pending: list[tuple[float, str | bytes, tuple[str, Any]]] = []

        async def settle(keep: int) -> None:
            while len(pending) > keep:
                marker, message, expected = pending.pop(0)
                answers = await _answers_until_marker(viewer, marker)
                kind = expected[0]
                report["errors_returned"] += sum(a["type"] == "error" for a in answers)
                report["pongs"] += sum(a["type"] == "pong" for a in answers)
                report["accepted_silently"] += kind == "nothing" and not answers
                if not _matches(expected, answers):
                    report["mismatches"] += 1
                    if len(report["mismatch_examples"]) < 5:
                        report["mismatch_examples"].append(
                            {"sent": repr(message)[:200], "expected": expected, "got": answers}
                        )

        run_start = time.monotonic()
        for i, drawn in enumerate(messages):
            message = _with_next_seq(drawn, model.last_seq + 1)
            marker = MARKER_T - i
            expected = model.expect(message)
            await pacer.wait()
            viewer.channel.send(message)
            await pacer.wait()
            viewer.send({"type": "ping", "t": marker})
            pending.append((marker, message, expected))
            report["messages"] += 1
            await settle(WINDOW)
            if (i + 1) % CHECKPOINT_EVERY == 0 or i + 1 == len(messages):
                await settle(0)
                await _checkpoint(viewer, model, report)
        fuzz_s = time.monotonic() - run_start

        burst = await _burst(viewer)
        await asyncio.sleep(2 * MESSAGE_BURST / MESSAGE_RATE_HZ)  # the bucket refills
        await _checkpoint(viewer, model, report)
        async with http.get(f"{url}/api/stats") as r:
            server = await r.json()
        async with http.get(f"{url}/health") as r:
            health = await r.json()
        await viewer.close()
    report.update(
        {
            "burst": burst,
            "messages_total": report["messages"] + BURST + report["checkpoints_streaming"],
            "worker_restarts": sum(w["restarts"] for w in server["workers"]),
            "server_status": health["status"],
            "generate_seconds": round(generate_s, 1),
            "fuzz_seconds": round(fuzz_s, 1),
            "seed": random_seed,
            "url": url,
        }
    )
    return report


def _with_next_seq(message: str | bytes, seq: int) -> str | bytes:
    if isinstance(message, str):
        return message.replace(f'"{NEXT_SEQ}"', str(seq))
    return message


async def _burst(viewer: rtc_client.Viewer) -> dict[str, Any]:
    """BURST pings at once, far over the rate limit: each must be answered with a pong or counted
    by the server as dropped (its `rate_limited`), and the drop reported with an `error`."""
    before = (await viewer.message("stats"))["rate_limited"]
    sent_at = time.monotonic()
    for i in range(BURST):
        viewer.send({"type": "ping", "t": float(i)})
    answered, reported = 0, False
    while True:
        m = await asyncio.wait_for(viewer.messages.get(), WAIT_S)
        answered += m["type"] == "pong"
        reported |= m["type"] == "error" and "rate limit" in m["message"]
        # A stats made a second after the burst has counted all of it (arrival takes ms).
        if m["type"] == "stats" and time.monotonic() - sent_at > 2 * STATS_PERIOD_S:
            dropped = m["rate_limited"] - before
            return {
                "sent": BURST,
                "answered": answered,
                "rate_limited": dropped,
                "accounted": answered + dropped == BURST,
                "limit_reported": reported,
            }


def main(argv: list[str] | None = None) -> int:
    parser = server_parser("bench.fuzz", __doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be positive")
    report = run_against(
        args.url, args.avatar, lambda url, _pid: asyncio.run(fuzz(url, args.messages, args.seed))
    )
    write_report(args.json, report)
    return 0 if passed(report) else 1


def passed(report: dict[str, Any]) -> bool:
    """Every message answered as the model says, the state never partly updated, no handler
    failure, the session streaming at every checkpoint, the burst accounted for, the server up."""
    return (
        report["mismatches"] == report["state_mismatches"] == report["internal_errors"] == 0
        and report["checkpoints_streaming"] == report["checkpoints"]
        and report["burst"]["accounted"]
        and report["burst"]["limit_reported"]
        and report["worker_restarts"] == 0
        and report["server_status"] == "ok"
    )


if __name__ == "__main__":
    raise SystemExit(main())
