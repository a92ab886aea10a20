"""The latency probe's block code: a frame's control `seq` stamped into the picture so that the
page can read it back after VP8/H264 and compute motion-to-photon latency.

Layout: one row of `BLOCKS` square blocks along the bottom edge, each width / BLOCKS pixels wide
(8 px at 256^2): a white and a black reference block (the decoder's threshold is their mean, so
the code survives the codec's contrast and level shifts), then `SEQ_BITS` bits of seq modulo
2^SEQ_BITS and `CHECK_BITS` check bits, most significant first, white = 1. Big flat blocks survive
chroma subsampling and the codecs' 4x4 / 8x8 transforms at any sensible bitrate; the check bits
make a misread a rejected read, never a wrong number. `web/probe.js` is the browser's reader.
"""

from __future__ import annotations

import numpy as np

BLOCKS = 32
SEQ_BITS = 20
CHECK_BITS = 10
SEQ_MODULO = 1 << SEQ_BITS
CHECK_MULTIPLIER = 0x9E37  # odd: spreads the seq bits over the check bits
WHITE, BLACK = 255, 0


def check_value(seq: int) -> int:
    """The CHECK_BITS check of a seq (mod 2^SEQ_BITS); the page computes the same."""
    return ((seq * CHECK_MULTIPLIER) >> 7) & ((1 << CHECK_BITS) - 1)


def bits_of(seq: int) -> list[int]:
    """seq -> the code's data bits: SEQ_BITS of seq, then CHECK_BITS of its check, MSB first."""
    value = seq % SEQ_MODULO
    word = (value << CHECK_BITS) | check_value(value)
    return [(word >> i) & 1 for i in range(SEQ_BITS + CHECK_BITS - 1, -1, -1)]


def block_size(width: int) -> int:
    size = width // BLOCKS
    if size < 2:
        raise ValueError(f"a {width} px wide picture is too narrow for the probe code")
    return size


def stamp(image: np.ndarray, seq: int) -> np.ndarray:
    """(H, W, 3) uint8 -> a copy with `seq` stamped along the bottom edge."""
    out = image.copy()
    size = block_size(image.shape[1])
    row = out[-size:]  # (size, W, 3) view of the bottom band
    levels = [WHITE, BLACK] + [WHITE if b else BLACK for b in bits_of(seq)]
    for i, level in enumerate(levels):
        row[:, i * size : (i + 1) * size] = level
    return out


def read(image: np.ndarray) -> int | None:
    """The seq stamped in (H, W, 3) uint8 (or (H, W) luma), or None when there is no valid code."""
    luma = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    size = block_size(luma.shape[1])
    band = luma[-size:]
    inner = slice(size // 4, size - size // 4) if size >= 4 else slice(0, size)
    centres = [
        float(band[inner, i * size : (i + 1) * size][:, inner].mean()) for i in range(BLOCKS)
    ]
    white, black = centres[0], centres[1]
    if white - black < 64:  # no reference contrast: no code here
        return None
    threshold = (white + black) / 2
    bits = [1 if c > threshold else 0 for c in centres[2 : 2 + SEQ_BITS + CHECK_BITS]]
    word = 0
    for b in bits:
        word = (word << 1) | b
    seq, check = word >> CHECK_BITS, word & ((1 << CHECK_BITS) - 1)
    return seq if check == check_value(seq) else None
