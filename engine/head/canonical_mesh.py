"""The MediaPipe canonical face mesh (468 vertices, 898 triangles, per-vertex UVs).

It is read from `geometry_pipeline_metadata_landmarks.binarypb` inside the shipped
`static/face_landmarker.task` bundle (Apache-2.0), so the default head needs no licensed file.
The file is a serialized `GeometryPipelineMetadata` protobuf; we decode the three fields we need
from the wire format directly rather than depend on MediaPipe's unpublished .proto classes.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TASK_BUNDLE = Path(__file__).resolve().parents[2] / "static" / "face_landmarker.task"
METADATA_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"
NUM_VERTICES = 468
NUM_FACES = 898

# Protobuf field numbers (mediapipe/modules/face_geometry/protos).
_METADATA_CANONICAL_MESH = 1
_METADATA_PROCRUSTES_BASIS = 2
_MESH_VERTEX_BUFFER = 3  # repeated float: x, y, z, u, v per vertex (VERTEX_PT)
_MESH_INDEX_BUFFER = 4  # repeated uint32: three per triangle
_BASIS_LANDMARK_ID = 1
_BASIS_WEIGHT = 2


@dataclass(frozen=True)
class CanonicalMesh:
    """vertices (468, 3) float32 in cm, +y up, +z towards the viewer; faces (898, 3) int64;
    uvs (468, 2) float32 in [0, 1] with v down (image convention); procrustes_weights (468,)
    float32: MediaPipe's per-landmark weights for pose alignment (zero for most of the outline)."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    procrustes_weights: np.ndarray


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | float | bytes]]:
    """Decode one protobuf message level into (field number, value) pairs in file order."""
    out: list[tuple[int, int | float | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            out.append((field, value))
        elif wire == 5:
            out.append((field, struct.unpack_from("<f", buf, pos)[0]))
            pos += 4
        elif wire == 1:
            out.append((field, struct.unpack_from("<d", buf, pos)[0]))
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            out.append((field, buf[pos : pos + length]))
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in {METADATA_MEMBER}")
    return out


def _packed_or_repeated(values: list[int | float | bytes], fmt: str) -> list[float] | list[int]:
    """A repeated scalar may be written packed (one bytes blob) or one value per field."""
    flat: list = []
    for value in values:
        if isinstance(value, bytes):
            if fmt == "f":
                flat.extend(struct.unpack(f"<{len(value) // 4}f", value))
            else:
                pos = 0
                while pos < len(value):
                    v, pos = _read_varint(value, pos)
                    flat.append(v)
        else:
            flat.append(value)
    return flat


def parse_metadata(blob: bytes) -> CanonicalMesh:
    top = _fields(blob)
    meshes = [v for f, v in top if f == _METADATA_CANONICAL_MESH]
    if len(meshes) != 1 or not isinstance(meshes[0], bytes):
        raise ValueError(f"{METADATA_MEMBER}: expected one canonical mesh, found {len(meshes)}")
    mesh = _fields(meshes[0])
    vbuf = _packed_or_repeated([v for f, v in mesh if f == _MESH_VERTEX_BUFFER], "f")
    ibuf = _packed_or_repeated([v for f, v in mesh if f == _MESH_INDEX_BUFFER], "i")
    if len(vbuf) != NUM_VERTICES * 5 or len(ibuf) != NUM_FACES * 3:
        raise ValueError(
            f"{METADATA_MEMBER}: expected {NUM_VERTICES} vertices and {NUM_FACES} triangles, "
            f"found {len(vbuf) / 5:g} and {len(ibuf) / 3:g}"
        )
    vt = np.asarray(vbuf, dtype=np.float32).reshape(NUM_VERTICES, 5)
    weights = np.zeros(NUM_VERTICES, dtype=np.float32)
    for field, value in top:
        if field == _METADATA_PROCRUSTES_BASIS and isinstance(value, bytes):
            entry = dict(_fields(value))
            weights[int(entry.get(_BASIS_LANDMARK_ID, 0))] = float(entry.get(_BASIS_WEIGHT, 0.0))
    return CanonicalMesh(
        vertices=np.ascontiguousarray(vt[:, :3]),
        faces=np.asarray(ibuf, dtype=np.int64).reshape(NUM_FACES, 3),
        uvs=np.ascontiguousarray(vt[:, 3:]),
        procrustes_weights=weights,
    )


@lru_cache(maxsize=4)
def load_canonical_mesh(bundle: Path = TASK_BUNDLE) -> CanonicalMesh:
    """Read the canonical mesh out of a Face Landmarker `.task` bundle."""
    try:
        with zipfile.ZipFile(bundle) as zf:
            blob = zf.read(METADATA_MEMBER)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"Face Landmarker bundle not found: {bundle}") from exc
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(
            f"{bundle} is not a Face Landmarker bundle with {METADATA_MEMBER}"
        ) from exc
    return parse_metadata(blob)
