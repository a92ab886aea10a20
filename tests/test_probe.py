"""server.probe: the seq block code reads back exactly, and through real VP8 and H264 encoding."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from server import probe

SIZE = 256


def _picture(seed: int) -> np.ndarray:
    """A busy picture: the code must not depend on a quiet background."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (SIZE // 16, SIZE // 16, 3), dtype=np.uint8)
    return np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))


@pytest.mark.parametrize("seq", [0, 1, 12345, probe.SEQ_MODULO - 1, probe.SEQ_MODULO + 7])
def test_stamp_and_read_round_trip(seq: int) -> None:
    stamped = probe.stamp(_picture(seq % 97), seq)
    assert probe.read(stamped) == seq % probe.SEQ_MODULO
    assert stamped.shape == (SIZE, SIZE, 3)


def test_a_picture_without_a_code_reads_as_none() -> None:
    assert probe.read(np.full((SIZE, SIZE, 3), 128, np.uint8)) is None
    assert probe.read(_picture(1)) is None


def test_a_damaged_code_is_rejected_not_misread() -> None:
    stamped = probe.stamp(_picture(2), 4242)
    size = probe.block_size(SIZE)
    col = (2 + 5) * size  # flip one data bit
    stamped[-size:, col : col + size] = 255 - stamped[-size:, col : col + size]
    assert probe.read(stamped) is None


@pytest.mark.parametrize("codec", ["libvpx", "libx264"])
def test_the_code_survives_real_encoding(codec: str) -> None:
    encoder = av.CodecContext.create(codec, "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width = encoder.height = SIZE
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.bit_rate = 300_000  # a low WebRTC bitrate
    decoder = av.CodecContext.create("vp8" if codec == "libvpx" else "h264", "r")
    assert isinstance(decoder, av.VideoCodecContext)
    seqs = list(range(1000, 1030))
    decoded: list[np.ndarray] = []
    for i, seq in enumerate(seqs):
        frame = av.VideoFrame.from_ndarray(probe.stamp(_picture(i), seq), format="rgb24")
        frame.pts = i
        for packet in encoder.encode(frame):
            decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(packet)]
    for packet in encoder.encode(None):
        decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(packet)]
    decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(None)]  # flush
    assert [probe.read(image) for image in decoded] == seqs
