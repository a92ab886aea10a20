"""The implicit warp split at its cache: the half of each convolution that reads cached features is
computed once per cache, the other half once per warped frame.

Every conv of the warp trunk that reads the cache (the stem reads C3, fuse4 reads C4, the head reads
C5) reads it concatenated with something new (the mesh's change, the upsampled trunk, the new
mask). A convolution is linear in its input channels, so conv(cat(cached, new)) =
conv_cached(cached) + conv_new(new): the first term does not change while 4-7 frames are drawn from
one cache, so it is made with the cache (`CacheTerms`), and a warped frame pays only for the new
channels. That is the neural cache's own idea carried one layer further: the paper caches the
generator's features; this also caches what the warp makes of them.

Two exact rewrites make the full-resolution layers cheap as well. A 3x3 conv after a nearest x2
upsampling sees, at each of the four output phases (row, column parity), a 3x3 neighbourhood of the
low-resolution input with summed weights: one 3x3 conv at low resolution with four times the output
channels, then `pixel_shuffle`. And a full-resolution mask entering that conv is read as its
`pixel_unshuffle` (four phase channels at low resolution), so the whole head runs at H/2 with 16
outputs instead of at H with 4 (the shape oneDNN has no fast kernel for). Measured on the shipped
avatar: see `ImplicitWarp`'s numbers in README's speed section.

For inference only (made from a network prepared for inference: BatchNorms folded), in torch; the
trained `ImplicitWarp` is unchanged, and the exported runtimes keep the graph as trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.render.networks.generator import LEAKY_SLOPE
from engine.render.networks.warp import ImplicitWarp, WarpOutput, mask_channel
from engine.render.neural_cache import CacheTerms, NeuralCache, block_means

PHASES = 4  # a 2x2 block of pixels: phase = row parity * 2 + column parity


def phase_kernel(weight: torch.Tensor, source: str) -> torch.Tensor:
    """A 3x3 conv at full resolution (O, I, 3, 3) -> the same conv at half resolution with its
    output in phase layout (`shuffle`): (4 O, I', 3, 3), output channel (a * 2 + b) * O + o is
    output o at row parity a, column parity b.

    source "nearest": the input is a nearest x2 upsampling of an (I)-channel low-resolution map
    (I' = I). source "unshuffled": the input is a full-resolution (I)-channel map given in phase
    layout (`unshuffle`: I' = 4 I, channel parity * I + c). Both exact, zero padding included: a
    full-resolution pixel outside the frame is a low-resolution one outside it.
    """
    if weight.shape[-2:] != (3, 3) or source not in ("nearest", "unshuffled"):
        raise ValueError(f"phase_kernel takes a 3x3 conv and nearest|unshuffled, got {source}")
    out_c, in_c = weight.shape[:2]
    groups = PHASES if source == "unshuffled" else 1
    kernel = weight.new_zeros(PHASES, out_c, groups, in_c, 3, 3)
    for a in range(2):
        for b in range(2):
            for u in range(3):  # full-resolution offset u - 1 from an output at parity a
                row, row_parity = divmod(a + u - 1, 2)  # low-resolution offset, input parity
                for v in range(3):
                    col, col_parity = divmod(b + v - 1, 2)
                    group = row_parity * 2 + col_parity if groups == PHASES else 0
                    kernel[a * 2 + b, :, group, :, row + 1, col + 1] += weight[:, :, u, v]
    return kernel.reshape(PHASES * out_c, groups * in_c, 3, 3)


def phase_bias(bias: torch.Tensor) -> torch.Tensor:
    """(O,) -> (4 O,): the same bias at every phase."""
    return bias.repeat(PHASES)


class SplitWarp(nn.Module):
    """`ImplicitWarp` (prepared for inference) as cached terms + per-frame terms; the same pictures
    up to float rounding. `terms(cache)` once per cache; `forward(cache, terms, uv, mask, controls)`
    per warped frame."""

    def __init__(self, warp: ImplicitWarp) -> None:
        super().__init__()
        trunk = warp.trunk
        config = warp.config
        self.embedding = trunk.embedding
        self.film = trunk.film
        self.body = trunk.body if trunk.body is not None else nn.Identity()
        self.reduce4 = trunk.reduce4
        self.reduce5 = _phase_pointwise(trunk.reduce5)
        c3, c4, c5 = config.c3_channels, config.c4_channels, config.c5_channels
        w4, w5 = config.warp_widths[1], config.warp_widths[2]
        stem, fuse4, head = _conv(trunk.stem), _conv(trunk.fuse4), trunk.head
        weights = [layer.weight.detach() for layer in (stem, fuse4, head)]
        biases = [_bias(layer) for layer in (stem, fuse4, head)]
        # stem: [C3 | change (4)] -> w3, at H/4
        self.stem_cached = _new_conv(weights[0][:, :c3], biases[0])
        self.stem_live = _new_conv(weights[0][:, c3:], None)
        # fuse4: [up(reduce4) (w4) | C4 | covered (1)] -> w4 at H/2, run at H/4 in phases
        self.fuse4_cached = _new_conv(weights[1][:, w4 : w4 + c4], biases[1])
        self.fuse4_live = _phase_conv(weights[1], w4, c4)
        # head: [up(reduce5) (w5) | C5 | new mask (1)] -> RGBA at H, run at H/2 in phases
        self.head_cached = _new_conv(weights[2][:, w5 : w5 + c5], biases[2])
        self.head_live = _phase_conv(weights[2], w5, c5)

    @staticmethod
    def splits(warp: ImplicitWarp) -> bool:
        """Whether `warp` can be split: its torch form, prepared for inference (the BatchNorms
        folded into biased convs), and not one that moves its cached skips per frame
        (`config.warp_flow`: no per-cache term to keep)."""
        if warp.trunk.flow is not None:
            return False
        stem = warp.trunk.stem[0]
        return warp.pool_each and not warp.training and getattr(stem, "bias", None) is not None

    def terms(self, cache: NeuralCache) -> CacheTerms:
        """The cached halves of stem, fuse4 and head for `cache` (computed in the warp's dtype)."""
        c3 = cache.c3
        c4 = cache.c4 if cache.c4 is not None else c3.new_zeros(0)
        c5 = cache.c5 if cache.c5 is not None else c3.new_zeros(0)
        stem = self.stem_cached(c3)
        fuse4 = self._cached(self.fuse4_cached, c4, c3, stem.shape[-1])
        head = self._cached(self.head_cached, c5, c3, 2 * stem.shape[-1])
        return CacheTerms(stem=stem, fuse4=fuse4, head=head)

    def _cached(
        self, conv: nn.Conv2d, layer: torch.Tensor, like: torch.Tensor, size: int
    ) -> torch.Tensor:
        if layer.numel() == 0:  # a layer the config does not cache enters as zeros: the bias
            bias = conv.bias
            assert bias is not None
            out = phase_bias(bias)[None, :, None, None].expand(like.shape[0], -1, size, size)
            return out.contiguous(memory_format=torch.channels_last)
        return unshuffle(conv(layer))

    def forward(
        self,
        cache: NeuralCache,
        terms: CacheTerms,
        uv: torch.Tensor,
        mask: torch.Tensor,
        controls: torch.Tensor,
    ) -> WarpOutput:
        dtype = terms.stem.dtype
        full = mask_channel(mask, dtype)  # (B, 1, H, W)
        half = unshuffle(full)  # (B, 4, H/2, W/2) the new mask's phases
        covered4 = half.mean(dim=1, keepdim=True)  # (B, 1, H/2, W/2) its 2x2 means
        quarter = unshuffle(covered4)  # (B, 4, H/4, W/4)
        covered3 = quarter.mean(dim=1, keepdim=True).float()  # (B, 1, H/4, W/4) 4x4 means
        moved = F.avg_pool2d(uv.permute(0, 3, 1, 2).float(), 4)  # (B, 2, H/4, W/4)
        blocks = cache.blocks if cache.blocks is not None else block_means(cache.uv, cache.mask)
        change = torch.cat((moved - blocks[:, :2], covered3, blocks[:, 2:]), dim=1).to(dtype)
        x = F.leaky_relu(terms.stem + self.stem_live(change), LEAKY_SLOPE)  # (B, w3, H/4, W/4)
        embedded = self.embedding(controls, cache.controls.to(controls.dtype))
        scale, shift = self.film(embedded).chunk(2, dim=1)
        x = x * (1.0 + scale[:, :, None, None]) + shift[:, :, None, None]
        x = self.reduce4(self.body(x))  # (B, w4, H/4, W/4)
        x = self.fuse4_live(torch.cat((x, quarter), dim=1)) + terms.fuse4  # (B, 4 w4, H/4, W/4)
        x = self.reduce5(F.leaky_relu(x, LEAKY_SLOPE))  # (B, 4 w5, H/4, W/4) in phases
        x = shuffle(x)  # (B, w5, H/2, W/2)
        x = self.head_live(torch.cat((x, half), dim=1)) + terms.head  # (B, 16, H/2, W/2)
        x = torch.sigmoid(x).to(torch.float32, memory_format=torch.contiguous_format)
        rgba = shuffle(x)  # (B, 4, H, W)
        return WarpOutput(rgb=rgba[:, :3], alpha=rgba[:, 3:])


def shuffle(x: torch.Tensor) -> torch.Tensor:
    """Phase layout -> picture: (B, 4 C, h, w), channel p * C + c the value of channel c at phase
    p -> (B, C, 2 h, 2 w), in x's memory format (NCHW or channels_last). `F.pixel_shuffle` with
    the phase first: in channels_last a pixel's C values then move as one run (the channel-inner
    order walked them one by one: 1.1 ms for the C4 term on one core)."""
    b, c4, h, w = x.shape
    c = c4 // PHASES
    if x.is_contiguous():
        y = x.view(b, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2)  # (B, C, h, 2, w, 2)
        return y.reshape(b, c, 2 * h, 2 * w)
    nhwc = x.permute(0, 2, 3, 1).view(b, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return nhwc.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)  # channels_last


def unshuffle(x: torch.Tensor) -> torch.Tensor:
    """Picture -> phase layout, the inverse of `shuffle`: (B, C, 2 h, 2 w) -> (B, 4 C, h, w)."""
    b, c, h2, w2 = x.shape
    h, w = h2 // 2, w2 // 2
    if x.is_contiguous():
        y = x.view(b, c, h, 2, w, 2).permute(0, 3, 5, 1, 2, 4)  # (B, 2, 2, C, h, w)
        return y.reshape(b, c * PHASES, h, w)
    nhwc = x.permute(0, 2, 3, 1).view(b, h, 2, w, 2, c).permute(0, 1, 3, 2, 4, 5)
    return nhwc.reshape(b, h, w, c * PHASES).permute(0, 3, 1, 2)  # channels_last


def _phase_conv(weight: torch.Tensor, upsampled: int, cached: int) -> nn.Conv2d:
    """The per-frame half of a full-resolution conv over [upsampled trunk | cached | mask]
    (O, upsampled + cached + 1, 3, 3): the trunk and mask channels, run at half resolution in
    phases (no bias: the cached half carries it)."""
    trunk = phase_kernel(weight[:, :upsampled], "nearest")
    mask = phase_kernel(weight[:, upsampled + cached :], "unshuffled")
    return _new_conv(torch.cat((trunk, mask), dim=1), None)


def _conv(block: nn.Module) -> nn.Conv2d:
    conv = block[0] if isinstance(block, nn.Sequential) else block
    if not isinstance(conv, nn.Conv2d):
        raise ValueError("the split warp needs the trunk's convs")
    return conv


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        raise ValueError(
            "the split warp is made from a warp prepared for inference (BatchNorm folded)"
        )
    return conv.bias.detach()


def _new_conv(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    out_c, in_c = weight.shape[:2]
    conv = nn.Conv2d(in_c, out_c, 3, padding=1, bias=bias is not None)
    conv = conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(bias)
    conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    conv.requires_grad_(False)
    return conv


def _phase_pointwise(block: nn.Module) -> nn.Sequential:
    """A 1x1 conv block (conv, folded BatchNorm, LeakyReLU) applied to each phase of a
    phase-layout map: the block-diagonal 1x1 conv over (channel, phase) channels, so that the
    shuffle after it moves w5 channels instead of 4 w4."""
    conv = _conv(block)
    weight = conv.weight.detach()[:, :, 0, 0]  # (O, I)
    eye = torch.eye(PHASES, dtype=weight.dtype, device=weight.device)
    kernel = torch.einsum("oi,pq->poqi", weight, eye).reshape(
        weight.shape[0] * PHASES, weight.shape[1] * PHASES, 1, 1
    )
    pointwise = nn.Conv2d(kernel.shape[1], kernel.shape[0], 1).to(weight.device, weight.dtype)
    with torch.no_grad():
        pointwise.weight.copy_(kernel)
        assert pointwise.bias is not None
        pointwise.bias.copy_(phase_bias(_bias(conv)))
    pointwise.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    pointwise.requires_grad_(False)
    return nn.Sequential(pointwise, nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
