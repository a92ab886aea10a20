"""The neural cache: what the expensive generator leaves behind for the cheap warp network.

Following Yu, Fels, Rhodin (WACV 2023): the generator's decoder features at three depths are kept
with the UV map and controls they were made from; the warp network makes the next frames from them.
A cache lives in the worker process that made it and never crosses a process boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CACHE_LAYERS = ("c3", "c4", "c5")  # coarse and wide -> fine and narrow


@dataclass(frozen=True)
class NeuralCache:
    """Features of one generator pass, batched over B.

    c3  (B, C3, H/4, W/4) decoder features at a quarter of the output resolution (wide), or None
        when the config does not cache it (C3 is always cached: the warp starts from it)
    c4  (B, C4, H/2, W/2) decoder features at half resolution (fewer channels), or None
    c5  (B, C5, H, W) decoder features at full resolution (few channels), or None
    uv  (B, H, W, 2) the UV map the generator saw, in [0, 1]; zero where `mask` is False
    mask (B, H, W) bool, where the mesh covered the frame
    controls (B, D) the control vector (expression weights, pose, view) of that frame
    screen (B, V, 3) the mesh's screen points in that frame, for the explicit warp's pixel motion
    """

    c3: torch.Tensor
    c4: torch.Tensor | None
    c5: torch.Tensor | None
    uv: torch.Tensor
    mask: torch.Tensor
    controls: torch.Tensor
    screen: torch.Tensor
