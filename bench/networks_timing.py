"""Generator vs warp speed of a renderer preset at batch 1, with the speed tricks one at a time.

    python -m bench.networks_timing [--preset cpu] [--repeats 30] [--threads 2] [--variants]
                                    [--compile] [--device cpu] [--json OUT]

The main figures use what the live renderer uses: fp32, `torch.inference_mode()`, channels_last
conv tensors, `--threads` intra-op threads. `--variants` also times each trick switched off
(NCHW, `no_grad` instead of inference mode, one thread), `--compile` adds `torch.compile` (slow to
build: tens of seconds per network). MACs are `engine.render.networks.macs` (FlopCounterMode). Inputs
are random (network cost does not depend on values); the explicit warp gets an identity pixel
motion, valid where the mesh mask is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.timing import median_ms
from engine.render.networks import (
    PRESETS,
    ExplicitWarp,
    Generator,
    ImplicitWarp,
    RendererConfig,
    identity_motion,
    macs,
    make_cache,
    prepare_for_inference,
)
from engine.render.neural_cache import NeuralCache
from engine.render.raster import PixelMotion

WARMUP = 10  # calls before timing: oneDNN picks and caches its kernels on the first ones
MASK_RADIUS = 0.4  # of the image side: a head-sized disk


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(
    config: RendererConfig, device: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PixelMotion]:
    gen = torch.Generator().manual_seed(0)
    size = config.resolution
    coords = (torch.arange(size) + 0.5) / size - 0.5
    mask = (coords[None, :] ** 2 + coords[:, None] ** 2 < MASK_RADIUS**2)[None]  # (1, H, W)
    uv = torch.rand(1, size, size, 2, generator=gen) * mask[..., None]  # (1, H, W, 2)
    x = torch.rand(1, config.generator_in_channels, size, size, generator=gen)  # (1, Cin, H, W)
    controls = torch.rand(1, config.control_dim, generator=gen)  # (1, D)
    motion = identity_motion(1, size, size, device)
    motion = PixelMotion(grid=motion.grid, valid=mask.to(device))
    x = x.to(device).contiguous(memory_format=memory_format)
    return x, uv.to(device), mask.to(device), controls.to(device), motion


def time_networks(
    config: RendererConfig,
    device: torch.device,
    repeats: int,
    threads: int,
    channels_last: bool = True,
    inference: bool = True,
    compile_nets: bool = False,
    fold_batch_norms: bool = True,
) -> dict[str, float]:
    """Median ms of generator, implicit and explicit warp forward passes at batch 1."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    nets: dict[str, nn.Module] = {
        "generator": Generator(config),
        "implicit": ImplicitWarp(config),
        "explicit": ExplicitWarp(config),
    }
    for net in nets.values():
        if fold_batch_norms:
            prepare_for_inference(net, device, channels_last)
        else:  # what prepare_for_inference does, less the folding
            # nn.Module.to accepts memory_format at run time; its type stubs do not list it.
            net.to(device=device, memory_format=memory_format).eval()  # type: ignore[call-overload]
    calls: dict[str, Callable[..., Any]] = {
        k: torch.compile(v) if compile_nets else v for k, v in nets.items()
    }
    x, uv, mask, controls, motion = _inputs(config, device, memory_format)
    mode = torch.inference_mode if inference else torch.no_grad
    with _threads(threads), mode():
        out = calls["generator"](x, controls)
        cache: NeuralCache = make_cache(out, config.cache_layers, uv, mask, controls, uv[:, :1, 0])

        def run_generator(i: int) -> object:
            return calls["generator"](x, controls)

        result = {"generator_ms": median_ms(run_generator, repeats, device, WARMUP)}
        for kind in ("implicit", "explicit"):

            def run_warp(i: int, call: Callable[..., Any] = calls[kind]) -> object:
                return call(cache, uv, mask, controls, motion)

            result[f"warp_{kind}_ms"] = median_ms(run_warp, repeats, device, WARMUP)
    result["ratio"] = round(result["generator_ms"] / result["warp_implicit_ms"], 2)
    result["ratio_explicit"] = round(result["generator_ms"] / result["warp_explicit_ms"], 2)
    return result


def measure(
    preset: str,
    device: torch.device,
    repeats: int,
    threads: int,
    variants: bool,
    compile_nets: bool,
) -> dict[str, Any]:
    config = PRESETS[preset]
    counts = macs(config)
    report: dict[str, Any] = {
        "device": str(device) if device.type != "cpu" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": threads,
        "preset": preset,
        "resolution": config.resolution,
        "generator_gmac": round(counts["generator"] / 1e9, 3),
        "warp_gmac": round(counts["warp_implicit"] / 1e9, 3),
        "warp_explicit_gmac": round(counts["warp_explicit"] / 1e9, 3),
        "main": {"channels_last": True, "inference_mode": True}
        | time_networks(config, device, repeats, threads),
    }
    if variants:
        report["variants"] = [
            {"name": "nchw"} | time_networks(config, device, repeats, threads, channels_last=False),
            {"name": "no_grad"} | time_networks(config, device, repeats, threads, inference=False),
            {"name": "one_thread"} | time_networks(config, device, repeats, 1),
            {"name": "batchnorm_unfolded"}
            | time_networks(config, device, repeats, threads, fold_batch_norms=False),
        ]
    if compile_nets:
        report["compiled"] = time_networks(config, device, repeats, threads, compile_nets=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", action="store_true", help="time each trick switched off")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    report = measure(
        args.preset,
        torch.device(args.device),
        args.repeats,
        args.threads,
        args.variants,
        args.compile,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
