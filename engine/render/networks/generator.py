"""The expensive generator: a U-Net from the sampled neural texture to RGB and alpha, with taps.

Encoder: a 3x3 conv stack at H, then len(widths) - 1 levels that each halve the resolution with a
stride-2 conv (learned downsampling, cheaper than conv + pool). Decoder: per level, nearest x2
upsampling, concatenation of the encoder's skip at that size, and 3x3 convs; upsample-then-conv
has no checkerboard artefacts (unlike transposed convs). The decoder outputs at H/4, H/2 and H
are C3, C4 and C5, the features the neural cache keeps (Yu et al. 2023).

Every conv is followed by BatchNorm. Without it the net diverged on the sample clip within ten
Adam steps (C5 activations 0.1 -> 1e5 at lr 5e-4: each wide conv's aligned updates multiply its
gain), the matte saturated at 0 and only the background was ever learned. BatchNorm's statistics
pool B x H x W pixels per channel, so a batch of 2 is plenty; at inference it is an affine map
that `fuse_batch_norms` folds into the conv before it, so the live renderer pays nothing for it.
LeakyReLU keeps a gradient for negative inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.render.networks.config import RendererConfig
from engine.render.neural_cache import NeuralCache, block_means

LEAKY_SLOPE = 0.2  # LeakyReLU negative slope (as in pix2pix / DNR)
RGBA_CHANNELS = 4  # the head's output: RGB then alpha
C3_LEVEL, C4_LEVEL, C5_LEVEL = 2, 1, 0  # decoder levels (resolution H / 2^level) of the taps


def conv_block(
    in_channels: int, out_channels: int, count: int, stride: int = 1, kernel: int = 3
) -> nn.Sequential:
    """`count` convs, each followed by BatchNorm and LeakyReLU; the first one maps the width and
    applies `stride`. (The conv has no bias: the BatchNorm after it has one.)"""
    layers: list[nn.Module] = []
    for i in range(count):
        conv_in = in_channels if i == 0 else out_channels
        layers.append(
            nn.Conv2d(conv_in, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        )
        layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        stride = 1
    return nn.Sequential(*layers)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, 2h, 2w), nearest: the conv after it does the smoothing."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


@dataclass(frozen=True)
class GeneratorOutput:
    """One generator pass.

    rgb   (B, 3, H, W) in [0, 1]
    alpha (B, 1, H, W) in [0, 1], the foreground matte
    c3    (B, C3, H/4, W/4) decoder features (wide)
    c4    (B, C4, H/2, W/2) decoder features
    c5    (B, C5, H, W) decoder features (few channels)
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    c3: torch.Tensor
    c4: torch.Tensor
    c5: torch.Tensor


def generator_input(texture_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) sampled texture and (B, H, W) bool mask -> (B, C+1, H, W) generator input."""
    return torch.cat((texture_features, mask[:, None].to(texture_features.dtype)), dim=1)


def make_cache(
    out: GeneratorOutput,
    cache_layers: tuple[str, ...],
    uv: torch.Tensor,
    mask: torch.Tensor,
    controls: torch.Tensor,
    screen: torch.Tensor,
    blocks: bool = False,
    framing: torch.Tensor | None = None,
) -> NeuralCache:
    """The neural cache of a generator pass: the features named in `cache_layers` (the others are
    None) with the UV map (B, H, W, 2), mask (B, H, W), controls (B, D) and mesh screen points
    (B, V, 3) of that frame, and with `blocks` their block means for the implicit warp (a cache
    that serves several warped frames), and a captured frame's `framing` (B, P). Tensors are
    kept as they are (not detached), so a warp loss can train through the generator; detach or
    run under inference mode to cut that."""
    return NeuralCache(
        c3=out.c3,
        c4=out.c4 if "c4" in cache_layers else None,
        c5=out.c5 if "c5" in cache_layers else None,
        uv=uv,
        mask=mask,
        controls=controls,
        screen=screen,
        blocks=block_means(uv, mask) if blocks else None,
        framing=framing,
    )


def served_framing(controls: torch.Tensor, served: torch.Tensor | None) -> torch.Tensor | None:
    """(B, D) controls -> (B, P) the framing a served frame reads, made from its controls by
    `served` (P, D + 1: weights, then bias; engine/training/body.py); None where there is no such
    fit (framing 0, the training median)."""
    if served is None:
        return None
    served = served.to(controls.dtype)
    return controls @ served[:, :-1].T + served[:, -1]


def _format_of(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class Generator(nn.Module):
    """U-Net: (B, texture_channels + 1, H, W) -> GeneratorOutput with C3/C4/C5 taps."""

    def __init__(self, config: RendererConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.generator_widths
        blocks = config.generator_blocks
        levels = len(widths)
        self.encoder = nn.ModuleList(
            [conv_block(config.generator_in_channels, widths[0], blocks)]
            + [conv_block(widths[k - 1], widths[k], blocks, stride=2) for k in range(1, levels)]
        )
        # Decoder widths per level: the cache taps at H/4, H/2, H; encoder widths below them.
        taps = {
            C3_LEVEL: config.c3_channels,
            C4_LEVEL: config.c4_channels,
            C5_LEVEL: config.c5_channels,
        }
        dec_widths = [taps.get(k, widths[k]) for k in range(levels)]
        # The control embedding joins the deepest features (H/2^(L-1)): it widens what the
        # deepest decoder block reads.
        extra = [config.generator_control_dim if k == levels - 2 else 0 for k in range(levels)]
        self.decoder = nn.ModuleList(
            conv_block(dec_widths[k + 1] + extra[k] + widths[k], dec_widths[k], blocks)
            for k in range(levels - 1)
        )  # decoder[k] makes level k from level k+1 and the skip at level k
        self.control_embedding: nn.Module | None = None
        if config.generator_control_dim:
            self.control_embedding = nn.Sequential(
                nn.Linear(config.control_dim, config.control_hidden),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
                nn.Linear(config.control_hidden, config.generator_control_dim),
            )
        # Where the crop sat in its source frame joins the embedding's first layer. No bias and
        # zero weights at first: framing 0 (the training median, as served) changes nothing,
        # and an avatar trained without it continues exactly as it was.
        self.framing_embedding: nn.Linear | None = None
        if config.generator_framing:
            self.framing_embedding = nn.Linear(
                config.generator_framing, config.control_hidden, bias=False
            )
            nn.init.zeros_(self.framing_embedding.weight)
        # The framing a served frame reads, made from its controls: (P, D + 1), weights then
        # bias, or None for framing 0 (engine/training/body.py: the body its head pose predicts).
        # Not saved with the weights: the avatar sets it from its summary.
        self.served_framing: torch.Tensor | None
        self.register_buffer("served_framing", None, persistent=False)
        self.head = nn.Conv2d(config.c5_channels, RGBA_CHANNELS, 1)

    def embed(self, controls: torch.Tensor, framing: torch.Tensor | None) -> torch.Tensor:
        """(B, D) controls and (B, P) framing or None -> (B, G) embedding."""
        assert self.control_embedding is not None
        if framing is None and self.framing_embedding is not None:
            framing = served_framing(controls, self.served_framing)
        if framing is None or self.framing_embedding is None:
            out: torch.Tensor = self.control_embedding(controls)
            return out
        first, *rest = self.control_embedding.children()
        h = first(controls) + self.framing_embedding(framing.to(controls.dtype))
        for layer in rest:
            h = layer(h)
        return h

    def forward(
        self,
        x: torch.Tensor,
        controls: torch.Tensor | None = None,
        framing: torch.Tensor | None = None,
    ) -> GeneratorOutput:
        """x (B, texture_channels + 1, H, W); controls (B, D), used when the config conditions
        the generator on them; framing (B, P) where each training frame's crop sat (None when
        served: the training median)."""
        skips = []
        for stage in self.encoder:
            x = stage(x)  # (B, widths[k], H/2^k, W/2^k)
            skips.append(x)
        if self.control_embedding is not None:
            if controls is None:
                raise ValueError("this generator is conditioned on the controls: pass them")
            emb = self.embed(controls.to(x.dtype), framing)  # (B, G)
            emb = emb[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])  # (B, G, h, w)
            x = torch.cat((x, emb.contiguous(memory_format=_format_of(x))), dim=1)
        taps: dict[int, torch.Tensor] = {}
        for k in range(len(self.decoder) - 1, -1, -1):
            x = torch.cat(
                (upsample2(x), skips[k]), dim=1
            )  # (B, dec[k+1] + widths[k], H/2^k, W/2^k)
            x = self.decoder[k](x)  # (B, dec[k], H/2^k, W/2^k)
            taps[k] = x
        rgba = torch.sigmoid(self.head(x))  # (B, 4, H, W)
        return GeneratorOutput(
            rgb=rgba[:, :3],  # (B, 3, H, W)
            alpha=rgba[:, 3:],  # (B, 1, H, W)
            c3=taps[C3_LEVEL],
            c4=taps[C4_LEVEL],
            c5=taps[C5_LEVEL],
        )
