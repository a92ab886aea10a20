"""The capture directory format: writing its arrays and reading them back, checked.

A capture directory holds (N = frames kept, i.e. frames in which a face was found):
- `frames/NNNNNN.png`: the crops, resolution x resolution RGB, named by original frame number.
- `capture.npz` (format FORMAT_VERSION):
    frame_index (N,) int64 original frame numbers (decode order) | time_s (N,) float64 stream time
    blendshapes (N, K) float32 in [0, 1], columns in the order of blendshape_names (K,) str. The
      model reports K = 52: `_neutral` plus 51 ARKit names (`tongueOut` is not among them).
    matrix (N, 4, 4) float32: MediaPipe's facial transformation matrix, raw. It maps the canonical
      mesh (cm) into the world frame; its 3x3 block is a rotation up to ~1e-5 scale noise.
    rotation (N, 3, 3) float32: that block made exactly orthonormal | translation (N, 3) float32 cm
    landmarks_norm (N, 478, 3) float32: MediaPipe's output (x / W, y / H, z relative, x's scale)
    landmarks_px (N, 478, 3) float32: pixels of each frame's own crop at `resolution`; z likewise
    landmarks_world (N, 478, 3) float32 cm: MediaPipe's metric landmarks (engine/capture/geometry)
    crop_boxes (N, 3) float64 x0, y0, side in source pixels, each inside the frame
    crop_translation (N, 3) float32 cm: the head's translation under camera.json's camera that
      puts it where it is in that frame's crop (engine/capture/crop.py)
    source_size (2,) int64 W, H | resolution () int64 | format () int64
- `camera.json`: the one `engine.camera.Camera` every crop is rendered with (the median box's).
- `source.json`: where the video came from (file, sample package and licence when a sample).
- `summary.json`: counts, frames without a face, decode errors, framing, checks and timings.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.camera import Camera
from engine.capture.geometry import NUM_LANDMARKS

FORMAT_VERSION = 2  # 1: one crop box for the whole clip (crop_box, padding)

ARRAYS = {  # name -> (dtype kind, shape with N for the frame count, K for the blendshapes)
    "frame_index": ("i", ("N",)),
    "time_s": ("f", ("N",)),
    "blendshapes": ("f", ("N", "K")),
    "blendshape_names": ("U", ("K",)),
    "matrix": ("f", ("N", 4, 4)),
    "rotation": ("f", ("N", 3, 3)),
    "translation": ("f", ("N", 3)),
    "landmarks_norm": ("f", ("N", NUM_LANDMARKS, 3)),
    "landmarks_px": ("f", ("N", NUM_LANDMARKS, 3)),
    "landmarks_world": ("f", ("N", NUM_LANDMARKS, 3)),
    "crop_boxes": ("f", ("N", 3)),
    "crop_translation": ("f", ("N", 3)),
    "source_size": ("i", (2,)),
    "resolution": ("i", ()),
    "format": ("i", ()),
}


@dataclass(frozen=True)
class CaptureData:
    """A capture directory loaded (N frames kept, K blendshapes, crops at R x R): the arrays of
    `capture.npz` as named in the module docstring, the crop PNGs (N,) in row order, the camera
    of the crops, resolution R, the source frame size and where the video came from."""

    directory: Path
    frame_index: np.ndarray
    time_s: np.ndarray
    blendshapes: np.ndarray
    blendshape_names: tuple[str, ...]
    matrix: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    landmarks_norm: np.ndarray
    landmarks_px: np.ndarray
    landmarks_world: np.ndarray
    crop_boxes: np.ndarray
    crop_translation: np.ndarray
    frame_paths: tuple[Path, ...]
    camera: Camera
    resolution: int
    source_size: tuple[int, int]
    source: dict[str, object]

    def __len__(self) -> int:
        return len(self.frame_index)


def write_capture(
    directory: Path, arrays: dict[str, Any], camera: Camera, source: dict[str, object]
) -> None:
    """Write capture.npz, camera.json and source.json into `directory` (frames/ is the caller's)."""
    missing = sorted(set(ARRAYS) - {"format"} - set(arrays))
    if missing:
        raise ValueError(f"capture arrays lack {', '.join(missing)}")
    np.savez(directory / "capture.npz", **(arrays | {"format": np.int64(FORMAT_VERSION)}))
    (directory / "camera.json").write_text(json.dumps(camera.to_dict(), indent=2) + "\n")
    (directory / "source.json").write_text(json.dumps(source, indent=2) + "\n")


def load_capture(directory: Path) -> CaptureData:
    """Read a directory written by `engine.capture`, checking every array's dtype and shape and
    that every crop exists; a ValueError names what is wrong."""
    directory = Path(directory)
    npz_path, camera_path = directory / "capture.npz", directory / "camera.json"
    for path in (npz_path, camera_path):
        if not path.is_file():
            raise ValueError(f"{directory} is not a capture directory: {path.name} is missing")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAYS if name in npz}
            old = "crop_box" in npz and "format" not in npz
        camera = Camera.from_dict(json.loads(camera_path.read_text()))
        source_path = directory / "source.json"
        source = json.loads(source_path.read_text()) if source_path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{directory} is not a readable capture: {exc}") from exc
    if old or ("format" in arrays and int(arrays["format"]) != FORMAT_VERSION):
        found = 1 if old else int(arrays["format"])
        raise ValueError(
            f"{directory} is a capture of format {found}; this engine reads format "
            f"{FORMAT_VERSION}: capture the video again"
        )
    missing = sorted(set(ARRAYS) - set(arrays))
    if missing:
        raise ValueError(f"{npz_path} lacks {', '.join(missing)}")
    sizes = {"N": len(arrays["frame_index"]), "K": len(arrays["blendshape_names"])}
    for name, (kind, shape) in ARRAYS.items():
        want = tuple(sizes[d] if isinstance(d, str) else d for d in shape)
        got = arrays[name]
        if got.dtype.kind != kind or got.shape != want:
            raise ValueError(
                f"{npz_path}: {name} is {got.dtype}{list(got.shape)}, expected kind {kind!r} "
                f"shape {list(want)}"
            )
    frame_paths = tuple(directory / "frames" / f"{int(i):06d}.png" for i in arrays["frame_index"])
    absent = [p.name for p in frame_paths if not p.is_file()]
    if absent:
        raise ValueError(f"{directory}: {len(absent)} crops missing from frames/, e.g. {absent[0]}")
    width, height = (int(v) for v in arrays["source_size"])
    return CaptureData(
        directory=directory,
        frame_index=arrays["frame_index"],
        time_s=arrays["time_s"],
        blendshapes=arrays["blendshapes"],
        blendshape_names=tuple(str(n) for n in arrays["blendshape_names"]),
        matrix=arrays["matrix"],
        rotation=arrays["rotation"],
        translation=arrays["translation"],
        landmarks_norm=arrays["landmarks_norm"],
        landmarks_px=arrays["landmarks_px"],
        landmarks_world=arrays["landmarks_world"],
        crop_boxes=arrays["crop_boxes"],
        crop_translation=arrays["crop_translation"],
        frame_paths=frame_paths,
        camera=camera,
        resolution=int(arrays["resolution"]),
        source_size=(width, height),
        source=dict(source),
    )
