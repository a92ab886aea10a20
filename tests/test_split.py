"""engine.training.split: interleaved held-out blocks, gaps, and training pairs that never reach in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.training.split import (
    held_out_pairs,
    interleaved_split,
    pair_starts,
    runs,
    sample_pairs,
)

FPS = 24.0


def _times(n: int) -> np.ndarray:
    return np.arange(n) / FPS


def test_the_talking_clip_gets_test_blocks_spread_over_it() -> None:
    split = interleaved_split(_times(4800), gap=8)  # 200 s: 50 blocks of 4 s
    assert len(split.test) == len(split.validation) == 6 * 96
    test_runs, val_runs = runs(split.test), runs(split.validation)
    assert len(test_runs) == 6 and test_runs[0] == [672, 768] and test_runs[-1][1] <= 4800
    # Each validation block sits just before its test block.
    assert [v[1] for v in val_runs] == [t[0] for t in test_runs]
    # Parts are disjoint and the test blocks cover the clip from start to end.
    parts = np.concatenate([split.train, split.validation, split.test])
    assert len(np.unique(parts)) == len(parts)
    assert test_runs[0][0] < 1000 and test_runs[-1][0] > 4000


@pytest.mark.parametrize("gap", [1, 4, 8])
def test_training_pairs_never_reach_a_held_out_frame(gap: int) -> None:
    split = interleaved_split(_times(2000), gap=gap)
    held = np.concatenate([split.validation, split.test])
    distance = np.abs(split.train[:, None] - held[None, :]).min(1)
    assert distance.min() > gap
    starts = pair_starts(split.train, gap)
    t, tk = sample_pairs(starts, 4096, gap, torch.Generator().manual_seed(0))
    k = tk - t
    assert int(k.min()) == 1 and int(k.max()) == gap
    train = set(split.train.tolist())
    assert all(int(a) in train and int(b) in train for a, b in zip(t, tk, strict=True))
    # ... and every frame between them is a training frame too (one contiguous run).
    assert all(
        set(range(int(a), int(b) + 1)) <= train for a, b in zip(t[:200], tk[:200], strict=True)
    )


def test_a_short_clip_still_gets_a_test_and_a_validation_block() -> None:
    split = interleaved_split(_times(40), gap=2)
    assert len(split.test) == 5 and len(split.validation) == 5
    assert split.test[-1] == 39 and split.validation[-1] == split.test[0] - 1
    with pytest.raises(ValueError, match="too short"):
        interleaved_split(_times(4), gap=2)
    with pytest.raises(ValueError, match="without frames"):
        interleaved_split(np.zeros(0))


def test_held_out_pairs_stay_inside_one_block() -> None:
    split = interleaved_split(_times(4800), gap=8)
    for k in (1, 4, 7):
        rows = held_out_pairs(split.test, k)
        test = set(split.test.tolist())
        assert all((r + j) in test for r in rows.tolist() for j in range(k + 1))
        assert len(rows) == 6 * (96 - k)


def test_the_split_record_names_it() -> None:
    a = interleaved_split(_times(3000), gap=8)
    record = a.to_dict()
    assert record["method"] == "interleaved" and record["gap"] == 8
    assert record["frames"] == {
        "train": len(a.train),
        "validation": len(a.validation),
        "test": len(a.test),
    }
    assert runs(a.test) == record["test"] and len(runs(a.test)) == 3  # 31 blocks of 4.03 s
    assert runs(a.validation) == record["validation"] and len(runs(a.validation)) == 4
    assert record["digest"] == interleaved_split(_times(3000), gap=8).digest()
    assert record["digest"] != interleaved_split(_times(3000), gap=4).digest()
    with pytest.raises(ValueError, match="no run of 9"):
        sample_pairs(np.zeros(0, np.int64), 2, 8, torch.Generator())


def test_pairs_can_be_drawn_from_the_served_distances_only() -> None:
    split = interleaved_split(_times(2000), gap=8)
    starts = pair_starts(split.train, 8)
    t, tk = sample_pairs(starts, 4096, 8, torch.Generator().manual_seed(0), min_k=4)
    k = tk - t
    assert int(k.min()) == 4 and int(k.max()) == 8
    # From 1 the draws are those the runs before the option made.
    old = sample_pairs(starts, 64, 8, torch.Generator().manual_seed(3))
    new = sample_pairs(starts, 64, 8, torch.Generator().manual_seed(3), min_k=1)
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])
    with pytest.raises(ValueError, match="min_k"):
        sample_pairs(starts, 4, 8, torch.Generator(), min_k=9)
