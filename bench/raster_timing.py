"""Rasteriser speed on the canonical face mesh: median milliseconds per call, as JSON.

    python -m bench.raster_timing [--device auto] [--repeats 50] [--resolutions 256 512]
        [--batches 1 4]

`time_raster` is what `bench.engine` can import. The mesh is MediaPipe's canonical face (468
vertices, 898 triangles), slightly turned, 60 cm from a camera that makes it cover about two
thirds of the square image. The figures depend on the process's malloc settings (`engine.runtime`, applied
here as in every entry point), so the JSON records them and the page faults per call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

from bench.timing import median_ms
from engine.camera import Camera, project
from engine.cpu import cpu_info
from engine.device import DEVICE_CHOICES_HELP, resolve_device
from engine.head.canonical_mesh import load_canonical_mesh
from engine.head.model import pose_rotation
from engine.render import raster_cpu
from engine.render.raster import pixel_motion, rasterize, rasterize_torch, uv_map
from engine.runtime import tune_allocator

WARMUP_CALLS = 10
HEAD_DISTANCE_CM = 60.0  # camera to head
FOCAL = 3.2  # focal length in image widths: the face covers about 65% of the image
POSE_DEG = (15.0, -5.0, 0.0)  # yaw, pitch, roll of the timed frame: a typical, slightly turned head
MOTION_STEP_DEG = 2.0  # extra yaw of the second frame in the pixel-motion timing
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def _posed_vertices(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """(V, 3) canonical vertices turned by the angles (degrees) and placed in front of the camera."""
    angles = [torch.tensor([a], dtype=torch.float32) for a in (yaw, pitch, roll)]
    rotation = pose_rotation(*angles)[0]  # (3, 3)
    verts = torch.from_numpy(load_canonical_mesh().vertices)
    return verts @ rotation.T + torch.tensor([0.0, 0.0, -HEAD_DISTANCE_CM])


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def time_raster(
    resolution: int, batch: int = 1, repeats: int = 50, device: str = "cpu"
) -> dict[str, Any]:
    """Median ms of `uv_map` (rasterise + UV interpolation; projection excluded) on the face mesh
    at a typical pose, `batch` copies per call, plus `rasterize` alone (the compiled CPU one where
    it loads) and `rasterize_torch` (the PyTorch one, what CUDA runs), and `pixel_motion`."""
    dev = resolve_device(device)
    mesh = load_canonical_mesh()
    faces = torch.from_numpy(mesh.faces).to(dev)
    face_uvs = torch.from_numpy(mesh.uvs).to(dev)[faces]  # (F, 3, 2)
    camera = Camera(fx=FOCAL, fy=FOCAL)
    size = (resolution, resolution)

    def screen(yaw_offset: float) -> torch.Tensor:
        yaw, pitch, roll = POSE_DEG
        verts = _posed_vertices(yaw + yaw_offset, pitch, roll).to(dev)
        return project(verts, camera, *size)[None].expand(batch, -1, -1).contiguous()

    with torch.inference_mode():
        verts_b, verts_a = screen(0.0), screen(MOTION_STEP_DEG)
        frag_a = rasterize(verts_a, faces, *size)
        frag_b = rasterize(verts_b, faces, *size)
        faults_before = _minor_faults()
        uv_ms = median_ms(
            lambda _: uv_map(verts_b, faces, face_uvs, *size), repeats, dev, WARMUP_CALLS
        )
        faults_after = _minor_faults()
        raster_ms = median_ms(
            lambda _: rasterize(verts_b, faces, *size), repeats, dev, WARMUP_CALLS
        )
        torch_ms = median_ms(
            lambda _: rasterize_torch(verts_b, faces, *size), repeats, dev, WARMUP_CALLS
        )
        motion_ms = median_ms(
            lambda _: pixel_motion(frag_b, verts_a, faces, *size, frag_a=frag_a),
            repeats,
            dev,
            WARMUP_CALLS,
        )
    faults = (
        None
        if faults_before is None or faults_after is None
        else round((faults_after - faults_before) / (repeats + WARMUP_CALLS), 1)
    )
    return {
        "resolution": resolution,
        "batch": batch,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "faces": int(faces.shape[0]),
        "coverage": round(float(frag_b.mask.float().mean()), 3),
        "uv_ms": uv_ms,
        "rasterizer": "compiled" if dev.type == "cpu" and raster_cpu.available() else "torch",
        "rasterize_ms": raster_ms,
        "rasterize_torch_ms": torch_ms,
        "pixel_motion_ms": motion_ms,
        "minor_page_faults_per_uv_call": faults,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    allocator_tuned = tune_allocator()
    runs = [
        time_raster(res, batch, args.repeats, args.device)
        for res in args.resolutions
        for batch in args.batches
    ]
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "allocator_tuned": allocator_tuned,
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "runs": runs,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
