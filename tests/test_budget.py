"""The server's latency budget, the encoder timing that feeds it and the floor's pictures."""

from __future__ import annotations

import threading

import numpy as np

from server.budget import KEPT, SERVER_STAGES, Budget
from server.codecs import TimedEncoder
from server.floor import floor_picture


def test_the_stages_of_a_frame_add_up_and_only_finished_frames_count() -> None:
    budget = Budget()
    for seq in range(1, 11):
        t = seq * 1.0
        budget.received(seq, t)
        budget.rendered(seq, t + 0.001, t + 0.004, t + 0.014, t + 0.015)
        budget.pulled(seq, t + 0.020)
        budget.encoded(seq, t + 0.020, t + 0.026)
    medians = budget.medians_ms()
    assert list(medians) == list(SERVER_STAGES)
    expected = {
        "receive": 1,
        "queue": 3,
        "render": 10,
        "copy_out": 1,
        "wait_encoder": 5,
        "encode": 6,
    }
    for stage, ms in expected.items():
        assert abs(medians[stage] - ms) < 1e-6
    # A picture never pulled (replaced by a newer one before the encoder asked) is not counted,
    # nor is an encode of a picture the budget never saw.
    budget.received(99, 100.0)
    budget.rendered(99, 100.0, 100.0, 100.01, 100.02)
    budget.encoded(99, 100.03, 100.04)
    budget.encoded(1234, 0.0, 1.0)
    assert budget.frames() == 10


def test_the_budget_is_bounded_and_thread_safe() -> None:
    budget = Budget()

    def encode_many(offset: int) -> None:
        for seq in range(offset, offset + 500):
            budget.encoded(seq, 0.0, 0.001)

    for seq in range(1000):
        budget.received(seq, 0.0)
        budget.rendered(seq, 0.0, 0.0, 0.0, 0.0)
        budget.pulled(seq, 0.0)
    threads = [threading.Thread(target=encode_many, args=(o,)) for o in (0, 500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.frames() <= KEPT  # most were dropped from the open list long before


def test_the_timed_encoder_reports_each_encode_and_passes_the_rest_through() -> None:
    calls: list[tuple[float, float]] = []

    class Codec:
        target_bitrate = 500_000

        def encode(self, frame: object, force_keyframe: bool = False) -> tuple[list[bytes], int]:
            return [b"x"], 1

        def pack(self, packet: object) -> tuple[list[bytes], int]:
            return [b"p"], 2

    class Frame:
        opaque = None

    codec = Codec()
    timed = TimedEncoder(codec)
    frame = Frame()
    frame.opaque = lambda start, end: calls.append((start, end))  # type: ignore[assignment]
    assert timed.encode(frame, False) == ([b"x"], 1)
    assert timed.encode(Frame(), False) == ([b"x"], 1)  # no note: nothing reported
    assert len(calls) == 1 and calls[0][1] >= calls[0][0]
    timed.target_bitrate = 300_000
    assert codec.target_bitrate == 300_000 and timed.pack(None) == ([b"p"], 2)


def test_floor_pictures_move_with_every_control() -> None:
    a, b = floor_picture(1, 256), floor_picture(2, 256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    assert np.array_equal(a, floor_picture(1, 256))
