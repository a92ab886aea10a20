"""Engine speed: per-stage milliseconds, written as JSON (keys: DESIGN.md, "Measurement contracts").

    python -m bench.engine --json OUT [--avatar A] [--presets cpu paper] [--device auto]
                           [--frames 200] [--resolutions 256 512] [--pipeline]
                           [--precision auto|fp32|bf16|fp16|int8] [--runtime auto|torch|...]

Two kinds of run, all at batch 1 (as the live server renders), over a smoothly moving control
trajectory, after a warm-up:
- preset runs (`--presets`): every stage of a frame, through an avatar of that preset: `head`
  (controls -> mesh), `uv` (mesh -> UV map), `texture` (neural texture at the UV map), `generator`
  (U-Net and compositing), `warp` (the warp network from the previous frame's cache, and
  compositing; the explicit kind includes its pixel motion), `to_image` (-> uint8 HxWx3).
  `generator_ms` is texture + generator (what a warped frame skips), `warp_ms` the warp, and
  `speedup` their ratio; `full_frame_ms` and `warped_frame_ms` are whole frames from controls to
  picture, and `frame_speedup` their ratio (the paper's per-frame figure). The `cpu` preset uses the avatar file (`--avatar`, default the shipped one); a preset
  the file is not gets random weights, which cost the same. MACs come from FlopCounterMode.
  Networks run as the live renderer runs them: channels_last, inference mode, and for the avatar
  file through the backend `--precision` / `--runtime` choose (default auto, as run.py), recorded
  as `backend` in the run; untrained presets run torch fp32.
- head + UV runs (`--resolutions`): the mesh stages alone at other sizes with the benchmark's own
  camera, the mesh covering a third of the frame.
- pipeline modes (`--pipeline`): worker processes run by each schedule, fps and latency
  (`bench.pipeline`), in the JSON's `modes`.
Each figure is the median over `--frames` frames (at most `PAPER_MAX_FRAMES` for `paper` on a CPU,
where one generator pass takes seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench import pipeline as pipeline_bench
from bench.timing import median_ms, sync
from engine.camera import Camera, project
from engine.controls import Controls, neutral, to_head_controls, update
from engine.cpu import cpu_info
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.default import build_default_head
from engine.head.model import HeadModel, orbit_vertices
from engine.render.avatar import DEFAULT_AVATAR, Avatar
from engine.render.backends.load import load_backend
from engine.render.backends.select import (
    CHOICES,
    DEFAULT_CACHE,
    RUNTIME_CHOICES,
    Selection,
    choose,
    summary_line,
)
from engine.render.backends.stages import FP32
from engine.render.frame import to_image
from engine.render.frame_inputs import FrameInputs, inputs_from_mesh, posed_mesh
from engine.render.networks import PRESETS, macs
from engine.render.networks.generator import generator_input
from engine.render.neural_cache import NeuralCache
from engine.render.raster import uv_map
from engine.runtime import tune_allocator

WARMUP_FRAMES = 20
TRAINING_OPTIONS = ("cache_layers", "warp_kind", "generator_control_dim", "generator_framing")
PAPER_MAX_FRAMES = 5  # the paper preset's generator takes seconds per frame on a CPU
PAPER_WARMUP_FRAMES = 2
STAGES = ("head", "uv", "texture", "generator", "warp", "to_image")
HEAD_DISTANCE_CM = 60.0  # the benchmark camera's distance to the head
FOCAL = 2.4  # focal length in image widths: the mesh covers about a third of the frame at 60 cm,
# more than in the sample capture's crops (21%), so the UV figures are not flattered


def trajectory(names: tuple[str, ...], frames: int) -> list[Controls]:
    """A fixed, smoothly moving sequence of controls: talking, blinking, turning."""
    out = []
    base = neutral(names)
    for i in range(frames):
        t = i / 30.0
        out.append(
            update(
                base,
                names,
                expression={
                    "jawOpen": 0.5 + 0.5 * math.sin(2 * math.pi * 1.5 * t),
                    "mouthSmileLeft": 0.5 + 0.5 * math.sin(2 * math.pi * 0.3 * t),
                    "eyeBlinkLeft": 1.0 if i % 90 < 5 else 0.0,
                    "eyeBlinkRight": 1.0 if i % 90 < 5 else 0.0,
                },
                pose={"yaw": 25 * math.sin(2 * math.pi * 0.2 * t), "pitch": 8 * math.sin(t)},
                view={"yaw": 10 * math.sin(2 * math.pi * 0.1 * t)},
            )
        )
    return out


def _timed(times: dict[str, list[float]], name: str, device: torch.device, start: float) -> float:
    """Record the milliseconds since `start` under `name` (after a CUDA sync); return now."""
    sync(device)
    now = time.perf_counter()
    times[name].append((now - start) * 1000.0)
    return now


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def preset_avatar(
    preset: str, avatar_path: Path | None, device: torch.device
) -> tuple[Avatar, str]:
    """The avatar file when it is of `preset`, else an untrained avatar of that preset (its speed is
    the same); with a note saying which."""
    if avatar_path is not None and avatar_path.exists() and file_preset(avatar_path) == preset:
        return Avatar.load(avatar_path, device), str(avatar_path)
    head = build_default_head()
    camera = Camera(fx=FOCAL, fy=FOCAL)
    translation = torch.tensor([0.0, 0.0, -HEAD_DISTANCE_CM])
    torch.manual_seed(0)
    return Avatar(PRESETS[preset], head, camera, translation).to(device), "untrained weights"


def file_preset(avatar_path: Path) -> str | None:
    """The preset an avatar file is of, or None. Training options on top of a preset (cache
    layers, warp kind, the generator's control conditioning) keep it that preset."""
    config = Avatar.load(avatar_path).config
    for name, preset in PRESETS.items():
        options = {f: getattr(config, f) for f in TRAINING_OPTIONS}
        if config == replace(preset, **options):
            return name
    return None


def measure_preset(
    preset: str,
    avatar_path: Path | None,
    device: torch.device,
    frames: int,
    backend: Selection | None = None,
) -> dict[str, Any]:
    """Every stage of a frame through an avatar of `preset` (see the module docstring); the
    avatar file's run through `backend` when given (untrained presets run torch fp32)."""
    avatar, weights = preset_avatar(preset, avatar_path, device)
    avatar.prepare_for_inference()
    if backend is not None and weights != "untrained weights":
        load_backend(avatar, backend.choice, torch.get_num_threads())
    warmup = WARMUP_FRAMES
    if preset == "paper" and device.type == "cpu":
        frames, warmup = min(frames, PAPER_MAX_FRAMES), PAPER_WARMUP_FRAMES
    head, res, camera = avatar.head, avatar.resolution, avatar.camera
    controls = trajectory(avatar.expression_names, frames + warmup)
    times: dict[str, list[float]] = {name: [] for name in STAGES}
    previous: tuple[NeuralCache, FrameInputs] | None = None
    with torch.inference_mode():
        for c in controls:
            start = time.perf_counter()
            hc, view = to_head_controls([c], head, avatar.translation)
            verts, centre = posed_mesh(head, hc, view)  # (1, V, 3), (1, 3)
            angles = torch.tensor(
                [[c.yaw, c.pitch, c.roll, c.view_yaw, c.view_pitch]], device=device
            )
            now = _timed(times, "head", device, start)
            x = inputs_from_mesh(head, verts, centre, hc, view, angles, camera, res)
            now = _timed(times, "uv", device, now)
            features = avatar.texture(x.uv, x.mask, x.view_dir)  # (1, C, H, W)
            now = _timed(times, "texture", device, now)
            net_in = generator_input(features, x.mask).contiguous(
                memory_format=avatar.memory_format
            )
            gen = avatar.run_generator(net_in, x.controls)
            avatar.composite(gen.rgb, gen.alpha)  # the full frame's picture
            cache = avatar.cache_of(gen, x)  # as served: prepared for the warps it will serve
            now = _timed(times, "generator", device, now)
            # The warp renders this frame from the previous frame's cache (k = 1), as a pipeline
            # worker does between two generator passes.
            cached, _ = previous or (cache, x)
            warped = avatar.warp(cached, x)
            now = _timed(times, "warp", device, now)
            to_image(warped.image)
            _timed(times, "to_image", device, now)
            previous = (cache, x)
    kept = {k: v[warmup:] for k, v in times.items()}
    stages = {k: _median(v) for k, v in kept.items()}
    per_frame = list(zip(*(kept[k] for k in STAGES), strict=True))
    full_ms = _median([h + u + t + g + o for h, u, t, g, _, o in per_frame])
    warped_ms = _median([h + u + w + o for h, u, _, _, w, o in per_frame])
    generator_ms = _median([t + g for _, _, t, g, _, _ in per_frame])
    counts = macs(avatar.config)
    coverage = float(x.mask.float().mean())
    return {
        "preset": preset,
        "resolution": res,
        "weights": weights,
        "warp_kind": avatar.config.warp_kind,
        "cache_layers": list(avatar.config.cache_layers),
        "frames": len(per_frame),
        "stages_ms": stages,
        "generator_ms": generator_ms,
        "warp_ms": stages["warp"],
        "speedup": round(generator_ms / stages["warp"], 2),
        "full_frame_ms": full_ms,
        "warped_frame_ms": warped_ms,
        # Per frame, as the paper measures 49.4 -> 14.9 ms (3.3x): inputs included on both sides.
        "frame_speedup": round(full_ms / warped_ms, 2),
        "generator_gmac": round(counts["generator"] / 1e9, 3),
        "warp_gmac": round(counts["warp"] / 1e9, 3),
        "mesh_coverage": round(coverage, 3),
        "backend": avatar.backend.to_dict(),
    }


def measure(device: torch.device, resolutions: list[int], frames: int) -> dict[str, Any]:
    head = HeadModel(build_default_head()).to(device)
    names = head.expression_names
    controls = trajectory(names, frames + WARMUP_FRAMES)
    translation = torch.tensor([0.0, 0.0, -HEAD_DISTANCE_CM])
    camera = Camera(fx=FOCAL, fy=FOCAL)
    faces, face_uvs = head.faces, head.face_uvs

    def head_stage(i: int) -> torch.Tensor:
        hc, view = to_head_controls([controls[i]], head, translation)
        out = head(hc)
        return orbit_vertices(out.vertices, out.centre, view)

    with torch.inference_mode():
        meshes = [head_stage(i) for i in range(len(controls))]
        head_ms = median_ms(head_stage, frames, device, WARMUP_FRAMES)
        runs = []
        for res in resolutions:

            def uv_stage(i: int, res: int = res) -> None:
                screen = project(meshes[i], camera, res, res)
                uv_map(screen, faces, face_uvs, res, res)

            uv_ms = median_ms(uv_stage, frames, device, WARMUP_FRAMES)
            screen = project(meshes[0], camera, res, res)
            coverage = float(uv_map(screen, faces, face_uvs, res, res)[0].mask.float().mean())
            runs.append(
                {
                    "preset": None,
                    "resolution": res,
                    "stages_ms": {"head": head_ms, "uv": uv_ms},
                    "head_plus_uv_ms": round(head_ms + uv_ms, 3),
                    "mesh_coverage": round(coverage, 3),
                }
            )
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "frames": frames,
        "mesh": {"vertices": head.data.num_vertices, "faces": int(faces.shape[0])},
        "runs": runs,
        "modes": [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--frames", type=int, default=200, help="frames timed per stage (median)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also time the pipeline modes with worker processes (needs the avatar file)",
    )
    parser.add_argument(
        "--pipeline-frames", type=int, default=300, help="frames timed per pipeline mode"
    )
    parser.add_argument(
        "--avatar",
        type=Path,
        default=DEFAULT_AVATAR,
        help="avatar file for its preset's run (default: the shipped one)",
    )
    parser.add_argument(
        "--precision",
        choices=CHOICES,
        default="auto",
        help="the avatar file's run (and the pipeline modes): as run.py chooses (default auto)",
    )
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    parser.add_argument(
        "--backend-cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="where measured backend choices and exported models are kept",
    )
    parser.add_argument(
        "--presets",
        nargs="*",
        choices=sorted(PRESETS),
        default=["cpu", "paper"],
        help="renderer presets to time (none: head and UV only)",
    )
    args = parser.parse_args(argv)
    if args.pipeline and not args.avatar.exists():
        parser.error(f"--pipeline renders a trained avatar: no file at {args.avatar}")
    if args.pipeline_frames < 10:
        parser.error("--pipeline-frames must be >= 10")
    if args.frames < 1 or any(r < 8 or r > 4096 for r in args.resolutions):
        parser.error("--frames must be >= 1 and resolutions within 8..4096")
    if args.avatar != DEFAULT_AVATAR and not args.avatar.exists():
        parser.error(f"--avatar: no such file: {args.avatar}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    allocator_tuned = tune_allocator()
    report = measure(device, args.resolutions, args.frames)
    report["allocator_tuned"] = allocator_tuned
    try:
        selection = None
        if args.avatar.exists() and file_preset(args.avatar) in args.presets:
            selection = choose(
                args.avatar,
                args.precision,
                args.runtime,
                str(device),
                torch.get_num_threads(),
                args.backend_cache,
            )
            print(summary_line(selection))
        report["backend"] = selection.to_dict() if selection else FP32.to_dict()
        report["runs"] = [
            measure_preset(p, args.avatar, device, args.frames, selection) for p in args.presets
        ] + report["runs"]
    except ValueError as exc:  # a damaged or foreign avatar file, an impossible backend
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.pipeline:
        names = Avatar.load(args.avatar).expression_names
        controls = trajectory(names, args.pipeline_frames)
        report["modes"] = pipeline_bench.measure(
            args.avatar, controls, args.pipeline_frames, args.precision, args.runtime
        )
        report["pipeline_avatar"] = str(args.avatar)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    for run in report["runs"]:
        stages = "  ".join(f"{k} {v:.2f}" for k, v in run["stages_ms"].items())
        extra = (
            f"  | generator {run['generator_ms']:.1f} ms, warp {run['warp_ms']:.1f} ms, "
            f"speedup {run['speedup']:.2f}, warped frame {run['warped_frame_ms']:.1f} ms"
            if run["preset"]
            else f"  | head + uv {run['head_plus_uv_ms']:.2f} ms"
        )
        print(f"{run['preset'] or '-':>6} {run['resolution']:>4}^2  {stages} ms{extra}")
    if report["modes"]:
        print(pipeline_bench.table(report["modes"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
