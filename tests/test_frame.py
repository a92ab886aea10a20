"""engine.render.frame: rendered tensors -> uint8 pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.render.frame import to_image


def test_to_image_rounds_clips_and_lays_out_hwc() -> None:
    image = torch.zeros(1, 3, 2, 4)
    image[0, 0, 0, 0] = 1.0  # red, top left
    image[0, 1, 1, 3] = 0.5  # half green, bottom right: 127.5 rounds to 128
    image[0, 2, 0, 1] = 2.0  # out of range: clipped to 255
    image[0, 2, 1, 0] = -1.0  # clipped to 0
    out = to_image(image)
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 3].tolist() == [0, 128, 0]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert out[1, 0].tolist() == [0, 0, 0]
    assert np.array_equal(to_image(image[0]), out)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (4, 4), (1, 4, 4, 4)])
def test_to_image_refuses_other_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        to_image(torch.zeros(shape))
