"""Where int8 breaks the generator: post-training quantization tried part by part.

    python -m bench.int8_sensitivity [--avatar A] --json OUT

The quality gate refuses the int8 generator (13 dB from fp32 on the shipped avatar). This finds
out why: the avatar's fp32 generator graph is quantized as the server does (ONNX Runtime,
`quantize_static`, QDQ, int8 weights per channel, uint8 activations per tensor), calibrated on the
avatar's calibration frames, in several ways (everything; one convolution alone; everything but
one; everything but the full- and half-resolution encoder blocks; percentile instead of min/max
ranges), and each is run by ONNX Runtime on the held-out frames'
inputs against the fp32 graph: the picture's PSNR and the C3 features' relative error. It also
lists the spread of the generator's input channels, which one per-tensor range must hold.

JSON: {"cpu", "avatar", "input_channels": [{"channel", "min", "max", "std"}], "trials": [{"name",
"rgb_psnr_db", "c3_relative_error"}]}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.local_server import write_report
from engine.cpu import cpu_info
from engine.render.avatar import Avatar
from engine.render.backends.gate import generator_inputs
from engine.render.backends.graphs import export_generator
from engine.render.backends.quantize import (
    GENERATOR_FLOAT_BLOCKS,
    GENERATOR_OP_TYPES,
    convs_in,
    quantize_int8,
)
from engine.render.backends.runtimes import as_array

DEFAULT_AVATAR = Path("static/default_avatar.pt")
Feeds = list[dict[str, np.ndarray]]


def _feeds(avatar: Avatar) -> tuple[Feeds, Feeds, torch.Tensor]:
    """Calibration feeds (training frames), evaluation feeds (held-out cache frames), and the
    calibration inputs `x` (B, C, H, W)."""
    ref = avatar.reference
    if ref is None:
        raise ValueError("the avatar carries no reference frames (python -m engine reference)")
    calibration = [a for a, _ in ref.calibration.tolist()]
    held_out = sorted({a for a, _ in ref.held_out.tolist()})
    with torch.inference_mode():
        cx = ref.inputs(avatar.head, avatar.camera, avatar.resolution, calibration)
        hx = ref.inputs(avatar.head, avatar.camera, avatar.resolution, held_out)
        cal_in, ev_in = generator_inputs(avatar, cx), generator_inputs(avatar, hx)

    def rows(x: torch.Tensor, controls: torch.Tensor) -> Feeds:
        return [
            {"x": as_array(x[i : i + 1]), "controls": as_array(controls[i : i + 1])}
            for i in range(x.shape[0])
        ]

    return rows(cal_in, cx.controls), rows(ev_in, hx.controls), cal_in.float()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10.0 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)))


def measure(avatar_path: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    torch.set_num_threads(1)
    avatar = Avatar.load(avatar_path).prepare_for_inference()
    calibration, evaluation, cal_x = _feeds(avatar)
    channels = [
        {
            "channel": c,
            "min": round(float(cal_x[:, c].min()), 3),
            "max": round(float(cal_x[:, c].max()), 3),
            "std": round(float(cal_x[:, c].std()), 4),
        }
        for c in range(cal_x.shape[1])
    ]
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        controls = torch.from_numpy(calibration[0]["controls"])
        x0 = torch.from_numpy(calibration[0]["x"])
        source = export_generator(avatar.generator, x0, controls, folder)
        fp32 = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        names = [o.name for o in fp32.get_outputs()]
        truth = [dict(zip(names, fp32.run(None, f), strict=True)) for f in evaluation]
        nodes = onnx.load(str(source)).graph.node
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        gemms = [n.name for n in nodes if n.op_type == "Gemm"]

        def trial(name: str, exclude: list[str], percentile: bool = False) -> None:
            target = quantize_int8(  # as the server quantizes, but for what is left in float
                source,
                folder / f"{len(trials)}.onnx",
                calibration,
                keep_float=exclude,
                percentile=percentile,
                op_types=GENERATOR_OP_TYPES,
            )
            run = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            out = [dict(zip(names, run.run(None, f), strict=True)) for f in evaluation]
            rgb = np.mean([_psnr(o["rgb"], t["rgb"]) for o, t in zip(out, truth, strict=True)])
            c3 = np.mean(
                [
                    np.abs(o["c3"] - t["c3"]).mean() / np.abs(t["c3"]).mean()
                    for o, t in zip(out, truth, strict=True)
                ]
            )
            trials.append(
                {
                    "name": name,
                    "rgb_psnr_db": round(float(rgb), 2),
                    "c3_relative_error": round(float(c3), 3),
                }
            )
            print(trials[-1], flush=True)

        trial("every conv and gemm, min/max ranges (as served before)", [])
        trial("every conv and gemm, percentile ranges", [], percentile=True)
        for conv in convs:
            short = conv.split("/")[-2]
            trial(f"only {short}", [c for c in convs if c != conv] + gemms)
        trial(f"all but {convs[0].split('/')[-2]} (the one reading the input)", [convs[0]])
        early = convs_in(source, GENERATOR_FLOAT_BLOCKS)  # what the server keeps in float
        trial("all but the first two encoder blocks (full and half resolution)", early)
        trial(
            "all but the first two encoder blocks, percentile ranges (as served)",
            early,
            percentile=True,
        )
    return {
        "cpu": cpu_info(),
        "avatar": str(avatar_path),
        "input_channels": channels,
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.int8_sensitivity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--avatar", type=Path, default=DEFAULT_AVATAR)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.avatar.exists():
        print(f"error: avatar file not found: {args.avatar}", file=sys.stderr)
        return 2
    try:
        report = measure(args.avatar)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
