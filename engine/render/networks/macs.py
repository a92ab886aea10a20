"""Counting a configuration's multiply-accumulates, beside the networks it builds."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.render.networks.config import RendererConfig
from engine.render.networks.generator import Generator, make_cache
from engine.render.networks.warp import ExplicitWarp, ImplicitWarp, identity_motion

FLOPS_PER_MAC = 2  # FlopCounterMode counts a multiply-accumulate as two operations


def macs(config: RendererConfig, batch: int = 1) -> dict[str, int]:
    """Multiply-accumulates of one forward pass at `batch`, counted by `FlopCounterMode` (convs,
    linears, matmuls; grid_sample and elementwise work are not counted) on the meta device.

    Returns {"generator", "warp" (the config's kind), "warp_implicit", "warp_explicit"}.
    """
    size = config.resolution
    meta = torch.device("meta")
    with meta:
        generator = Generator(config)
        warps = {"implicit": ImplicitWarp(config), "explicit": ExplicitWarp(config)}
        x = torch.zeros(batch, config.generator_in_channels, size, size)
        uv = torch.zeros(batch, size, size, 2)
        mask = torch.zeros(batch, size, size, dtype=torch.bool)
        controls = torch.zeros(batch, config.control_dim)
    with FlopCounterMode(display=False) as counter:
        out = generator(x, controls)
    result = {"generator": counter.get_total_flops() // FLOPS_PER_MAC}
    cache = make_cache(out, config.cache_layers, uv, mask, controls, torch.zeros(batch, 1, 3))
    motion = identity_motion(batch, size, size, meta)
    for kind, warp in warps.items():
        with FlopCounterMode(display=False) as counter:
            warp(cache, uv, mask, controls, motion)
        result[f"warp_{kind}"] = counter.get_total_flops() // FLOPS_PER_MAC
    result["warp"] = result[f"warp_{config.warp_kind}"]
    return result
