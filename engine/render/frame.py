"""Rendered tensors -> the picture a video track sends: (H, W, 3) uint8 RGB in host memory.

The conversion runs on the tensor's own device, so a CUDA renderer copies a quarter of the bytes
(uint8, not float32) to the host.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_LEVEL = 255.0  # 8-bit colour


def to_image(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8, C-contiguous, on the host.

    Values outside [0, 1] are clipped; rounding is to nearest.
    """
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"to_image takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    levels = (image.clamp(0.0, 1.0) * MAX_LEVEL + 0.5).to(torch.uint8)  # (3, H, W)
    return levels.permute(1, 2, 0).contiguous().cpu().numpy()  # (H, W, 3)
