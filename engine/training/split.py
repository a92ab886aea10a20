"""Which frames of a capture train, validate and test: interleaved blocks over the whole clip.

The clip is cut into blocks of about BLOCK_S seconds; in every run of EVERY blocks the last is a
test block and the one before it a validation block, so test frames come from every part of the
clip (every mood, every pose it shows) rather than from its end. Training frames keep a gap of
`gap` frames from every held-out block, the largest warp distance trained, so that no training pair
(t, t + k) reaches into one. Everything fitted from a capture (crop camera aside, which frames
do not inform beyond their landmarks' median) uses `train` rows only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

BLOCK_S = 4.0  # seconds per block
EVERY = 8  # one test and one validation block in every EVERY blocks
DEFAULT_GAP = 8  # frames: the largest warp distance trained by default
MIN_TRAIN_FRAMES = 2


@dataclass(frozen=True)
class Split:
    """Row indices (ascending) of each part, and how they were chosen."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    block_s: float
    every: int
    gap: int

    def to_dict(self) -> dict[str, object]:
        """What an avatar records: the parameters, each part's row runs [first, end) and a
        digest of all three, which `engine evaluate` compares with the capture's split."""
        return {
            "method": "interleaved",
            "block_s": self.block_s,
            "every": self.every,
            "gap": self.gap,
            "frames": {
                "train": len(self.train),
                "validation": len(self.validation),
                "test": len(self.test),
            },
            "validation": runs(self.validation),
            "test": runs(self.test),
            "digest": self.digest(),
        }

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.validation, self.test):
            h.update(np.asarray(part, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]


def runs(rows: np.ndarray) -> list[list[int]]:
    """Ascending rows -> [[first, end), ...] of their contiguous runs."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [[int(r[0]), int(r[-1]) + 1] for r in np.split(rows, breaks)]


def interleaved_split(
    time_s: np.ndarray, gap: int = DEFAULT_GAP, block_s: float = BLOCK_S, every: int = EVERY
) -> Split:
    """(N,) frame times, ascending -> the split. A clip shorter than `every` blocks of `block_s`
    gets `every` shorter blocks, so that every clip has a test and a validation block."""
    n = len(time_s)
    if n == 0:
        raise ValueError("cannot split a capture without frames")
    t = np.asarray(time_s, dtype=np.float64) - float(time_s[0])
    duration = float(t[-1]) + 1e-9
    blocks = max(every, round(duration / block_s))
    block = np.minimum((t / duration * blocks).astype(np.int64), blocks - 1)  # (N,)
    role = block % every
    test = role == every - 1
    validation = role == every - 2
    held = test | validation
    # Distance in rows to the nearest held-out row, both ways: training rows keep `gap` away.
    near = np.zeros(n, dtype=bool)
    for shift in range(1, gap + 1):
        near[:-shift] |= held[shift:]
        near[shift:] |= held[:-shift]
    train = ~held & ~near
    if train.sum() < MIN_TRAIN_FRAMES or not test.any() or not validation.any():
        raise ValueError(
            f"a capture of {n} frames is too short to split into train/validation/test"
        )
    rows = np.arange(n)
    return Split(rows[train], rows[validation], rows[test], float(block_s), every, gap)


def pair_starts(rows: np.ndarray, max_k: int) -> np.ndarray:
    """Rows t of `rows` (ascending) for which t + 1 .. t + max_k are all in `rows` too."""
    member = np.zeros(int(rows[-1]) + max_k + 2, dtype=bool) if len(rows) else np.zeros(0, bool)
    member[rows] = True
    ok = member[rows].copy()
    for k in range(1, max_k + 1):
        ok &= member[rows + k]
    return rows[ok]


def sample_pairs(
    starts: np.ndarray, batch: int, max_k: int, generator: torch.Generator, min_k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) cache frames t drawn from `starts` (`pair_starts`) and (B,) later frames t + k, k
    uniform in min_k..max_k."""
    if len(starts) == 0:
        raise ValueError(f"no run of {max_k + 1} consecutive frames to draw pairs from")
    if not 1 <= min_k <= max_k:
        raise ValueError(f"warp distances {min_k}..{max_k}: need 1 <= min_k <= max_k")
    pick = torch.randint(0, len(starts), (batch,), generator=generator)  # (B,)
    k = torch.randint(min_k, max_k + 1, (batch,), generator=generator)  # (B,)
    t = torch.as_tensor(starts)[pick]
    return t, t + k


def held_out_pairs(rows: np.ndarray, k: int) -> np.ndarray:
    """Rows t of a held-out part such that t + k is in the same contiguous run: every pair at
    distance k inside the part."""
    return pair_starts(rows, k)
