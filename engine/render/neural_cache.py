"""The neural cache: what the expensive generator leaves behind for the cheap warp network.

Following Yu, Fels, Rhodin (WACV 2023): the generator's decoder features at three depths are kept
with the UV map and controls they were made from; the warp network makes the next frames from them.
A cache lives in the worker process that made it and never crosses a process boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CACHE_LAYERS = ("c3", "c4", "c5")  # coarse and wide -> fine and narrow
C3_FACTOR, C4_FACTOR = 4, 2  # C3 lives at H/4, C4 at H/2
BLOCK_CHANNELS = 3  # u, v and coverage: `block_means`


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
    blocks (B, 3, H/4, W/4) float32 `block_means(uv, mask)`, made once with a served cache for
        the implicit warp, which otherwise pools them again for every frame it draws from the
        cache (4-7 of them: 0.3 ms each at 256^2 on two cores); None: the warp pools them itself
    terms what the torch implicit warp's convolutions make of c3/c4/c5 (`CacheTerms`), made once
        with a served cache by the warp stage's `prepare`; None: the warp makes them itself
    framing (B, P) where a captured frame's crop and body sat (`FrameInputs.framing`), for a warp
        that reads it; None when served (the warp makes it from `controls`)
    """

    c3: torch.Tensor
    c4: torch.Tensor | None
    c5: torch.Tensor | None
    uv: torch.Tensor
    mask: torch.Tensor
    controls: torch.Tensor
    screen: torch.Tensor
    blocks: torch.Tensor | None = None
    terms: CacheTerms | None = None
    framing: torch.Tensor | None = None


@dataclass(frozen=True)
class CacheTerms:
    """The halves of the warp's convolutions that read only cached features, batched over B, in
    the warp's dtype (`engine.render.networks.split_warp`, which says why).

    stem  (B, w3, H/4, W/4)    the stem conv of C3, its bias included
    fuse4 (B, 4 w4, H/4, W/4)  the fuse4 conv of C4, bias included, in phase layout
    head  (B, 16, H/2, W/2)    the head conv of C5, bias included, in phase layout
    """

    stem: torch.Tensor
    fuse4: torch.Tensor
    head: torch.Tensor

    @staticmethod
    def stack(parts: list[CacheTerms]) -> CacheTerms:
        """B terms of batch 1 -> one of batch B (a warp batched over sessions)."""
        return CacheTerms(
            stem=torch.cat([p.stem for p in parts]),
            fuse4=torch.cat([p.fuse4 for p in parts]),
            head=torch.cat([p.head for p in parts]),
        )


def block_means(uv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 2) UV map and (B, H, W) bool mask -> (B, 3, H/4, W/4) float32 means over C3's
    4 x 4 blocks of u, v (zero where empty) and coverage: what the implicit warp reads of how the
    mesh moved. Pooled in fp32 whatever the networks run in (the (B, H, W, 2) map read as
    channels_last without a copy)."""
    planes = torch.cat((uv.permute(0, 3, 1, 2), mask[:, None].to(uv.dtype)), dim=1).float()
    return F.avg_pool2d(planes, C3_FACTOR)  # (B, 3, H/4, W/4)
