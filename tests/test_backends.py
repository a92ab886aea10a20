"""Backends: each stage through torch (fp32, bf16), ONNX Runtime and OpenVINO (fp32, int8), the
quality gate and the measured choice, on a tiny avatar with reference frames of a real capture."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.capture.store import load_capture
from engine.controls import update
from engine.head.default import build_default_head
from engine.head.model import HeadModel
from engine.pipeline.dispatcher import Pipeline, PipelineSettings
from engine.pipeline.schedule import Schedule
from engine.pipeline.worker import stack_caches
from engine.render.avatar import Avatar
from engine.render.backends import gate as gate_module
from engine.render.backends import select as select_module
from engine.render.backends.gate import MIN_PSNR_FROM_FP32
from engine.render.backends.load import load_backend
from engine.render.backends.reference import ReferenceFrames
from engine.render.backends.select import choose
from engine.render.backends.stages import BackendChoice, StageChoice
from engine.render.networks import PRESETS
from engine.training.dataset import CaptureFrames
from engine.training.reference_frames import build_reference
from engine.training.split import interleaved_split


@pytest.fixture(scope="module")
def referenced_avatar(short_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained avatar (64^2) carrying reference frames of the short capture."""
    data = load_capture(short_capture)
    head_data = build_default_head()
    config = PRESETS["tiny"]
    frames = CaptureFrames(data, HeadModel(head_data), config.resolution)
    split = interleaved_split(data.time_s, gap=2, block_s=0.2, every=4)
    torch.manual_seed(0)
    avatar = Avatar(config, head_data, data.camera, frames.median_translation(split.train))
    frames.head = avatar.head
    avatar.summary["split"] = split.to_dict()
    avatar.reference = build_reference(frames, split)
    path = tmp_path_factory.mktemp("backends") / "tiny.pt"
    avatar.save(path)
    return path


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _pictures(avatar: Avatar) -> tuple[torch.Tensor, torch.Tensor]:
    """A generator frame of rest and a warp from its cache to an open mouth and a turned head."""
    names = avatar.expression_names
    rest = avatar.rest
    moved = update(rest, names, expression={"jawOpen": 0.8}, pose={"yaw": 8.0})
    with torch.inference_mode():
        rendered, cache = avatar.generate(avatar.inputs([rest]))
        warped = avatar.warp(cache, avatar.inputs([moved]))
    return rendered.image, warped.image


def test_reference_frames_round_trip_and_match_the_capture(
    referenced_avatar: Path, short_capture: Path
) -> None:
    avatar = Avatar.load(referenced_avatar)
    ref = avatar.reference
    assert ref is not None and len(ref.calibration) > 0 and len(ref.held_out) > 0
    assert set(ref.truth) == {int(i) for i in ref.held_out.flatten()}
    # The inputs rebuilt from the file are those of the capture's own frames.
    data = load_capture(short_capture)
    frames = CaptureFrames(data, avatar.head, avatar.resolution)
    first = int(ref.held_out[0, 0])
    row = int(np.argmin(np.abs(frames.expression - ref.expression[first]).sum(1).numpy()))
    mine = ref.inputs(avatar.head, avatar.camera, avatar.resolution, [first])
    theirs = frames.inputs(torch.tensor([row]))
    assert torch.equal(mine.mask, theirs.mask)
    assert torch.allclose(mine.uv, theirs.uv, atol=1e-5)
    assert torch.equal(ref.truth[first], frames.uint8(torch.tensor([row]))[0])
    # A damaged reference block is refused by name, not loaded half.
    payload = torch.load(referenced_avatar, weights_only=True)
    payload["reference"]["held_out"] = torch.tensor([[0, 10_000]])
    with pytest.raises(ValueError, match="held_out"):
        ReferenceFrames.from_payload(payload["reference"])


@pytest.mark.parametrize(
    "choice, min_db",
    [
        (StageChoice("torch", "bf16"), 30.0),
        (StageChoice("onnxruntime", "fp32"), 80.0),
        (StageChoice("openvino", "fp32"), 60.0),
    ],
)
def test_each_runtime_renders_what_torch_fp32_renders(
    referenced_avatar: Path, tmp_path: Path, choice: StageChoice, min_db: float
) -> None:
    torch.set_num_threads(1)
    fp32 = Avatar.load(referenced_avatar).prepare_for_inference()
    want_gen, want_warp = _pictures(fp32)
    other = Avatar.load(referenced_avatar).prepare_for_inference()
    if choice.runtime != "torch":  # export the graphs the runtime reads
        sel_dir = tmp_path / "models"
        with torch.inference_mode():
            frames = gate_module.gate_frames(other)
            gen_in = gate_module.generator_inputs(other, frames.anchors)
            caches = [
                gate_module.generated(other, other.run_generator, frames.anchors, gen_in, 0)[1]
            ]
            select_module._export(
                other, dataclasses.replace(frames, pair_anchor=[0]), gen_in, caches, sel_dir, False
            )
        load_backend(other, BackendChoice(choice, choice, sel_dir), threads=1)
    else:
        load_backend(other, BackendChoice(choice, choice), threads=1)
    got_gen, got_warp = _pictures(other)
    assert got_gen.dtype == torch.float32 and got_gen.shape == want_gen.shape
    assert _psnr(got_gen, want_gen) >= min_db
    assert _psnr(got_warp, want_warp) >= min_db
    # Two sessions' warps in one call (as a worker runs what is queued) give each the picture of
    # its own call: OpenVINO compiles the batch's shape the first time it comes.
    rest, names = other.rest, other.expression_names
    states = [
        update(rest, names, expression={"jawOpen": 0.8}),
        update(rest, names, pose={"yaw": -6.0}),
    ]
    with torch.inference_mode():
        caches = [other.generate(other.inputs([c]))[1] for c in (rest, states[1])]
        batched = other.warp(stack_caches(caches), other.inputs(states)).image
        singles = [
            other.warp(c, other.inputs([s])).image for c, s in zip(caches, states, strict=True)
        ]
    assert batched.shape[0] == 2 and _psnr(batched, torch.cat(singles)) >= 60.0


def test_choice_measures_gates_caches_and_refuses_the_impossible(
    referenced_avatar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However busy the machine running this test is, the choice is cached (its own test below).
    monkeypatch.setattr(select_module, "MAX_OTHER_CORES", math.inf)
    cache = tmp_path / "cache"
    selection = choose(referenced_avatar, "auto", "auto", "cpu", 1, cache)
    assert selection.source == "measured" and selection.gate == "held-out frames"
    table = {(f.stage, f.runtime, f.precision): f for f in selection.figures}
    # Every candidate is listed: measured, or with the reason it could not run here.
    for stage in ("generator", "warp"):
        for runtime, precision in (
            ("torch", "fp32"),
            ("onnxruntime", "int8"),
            ("openvino", "fp32"),
        ):
            f = table[(stage, runtime, precision)]
            assert (f.ms is not None) or f.reason
        fp32 = table[(stage, "torch", "fp32")]
        assert fp32.passed and fp32.psnr_fp32 == gate_module.PSNR_CAP and fp32.truth_loss_db == 0
    # int8 was calibrated on the avatar's own frames and judged like the rest.
    int8 = table[("warp", "onnxruntime", "int8")]
    assert int8.ms is not None and int8.psnr_fp32 is not None and int8.truth_loss_db is not None
    assert int8.passed == (
        int8.psnr_fp32 >= MIN_PSNR_FROM_FP32 and int8.truth_loss_db <= gate_module.MAX_TRUTH_LOSS_DB
    )
    # What was chosen passed, and is the least work per frame of what passed.
    for stage, chosen in (
        ("generator", selection.choice.generator),
        ("warp", selection.choice.warp),
    ):
        assert table[(stage, chosen.runtime, chosen.precision)].passed
    assert (
        selection.served_psnr_fp32 is not None and selection.served_psnr_fp32 >= MIN_PSNR_FROM_FP32
    )
    # The texture's two forms were both timed; the collapsed one is used only where it passed.
    forms = {f.form: f for f in selection.figures if f.stage == "texture"}
    assert set(forms) == {"pyramid", "collapsed"} and forms["pyramid"].passed
    if selection.choice.texture == "collapsed":
        assert forms["collapsed"].passed
    again = choose(referenced_avatar, "auto", "auto", "cpu", 1, cache)
    assert again.source == "cache" and again.choice == selection.choice
    written = json.loads(next(cache.glob("*/selection.json")).read_text())
    assert written["label"] == selection.choice.label
    # A request that cannot be met names why; fp32 torch needs no measuring at all.
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        choose(referenced_avatar, "fp16", "torch", "cpu", 1, cache)
    with pytest.raises(ValueError, match="no torch candidate runs int8"):
        choose(referenced_avatar, "int8", "torch", "cpu", 1, cache)
    with pytest.raises(ValueError, match="unknown precision"):
        choose(referenced_avatar, "fp8", "auto", "cpu", 1, cache)
    assert choose(referenced_avatar, "fp32", "torch", "cpu", 1, cache).source == "requested"


def test_a_pair_that_fails_together_gives_way_to_the_next_not_to_fp32(
    referenced_avatar: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each stage passed alone; the cheapest pair is made to miss the gate together (its check
    reads 30 dB): the next pair is served, and only when none passes is it torch fp32."""
    real = select_module.psnr
    calls = {"n": 0}

    def first_pair_fails(a: torch.Tensor, b: torch.Tensor) -> float:
        calls["n"] += 1  # a pair's check takes two readings: warps and generator frames
        return 30.0 if calls["n"] <= 2 else float(real(a, b))

    monkeypatch.setattr(select_module, "psnr", first_pair_fails)
    monkeypatch.setattr(select_module, "MAX_OTHER_CORES", math.inf)
    with caplog.at_level("WARNING", logger=select_module.LOG.name):
        second = choose(referenced_avatar, "auto", "auto", "cpu", 1, tmp_path / "a")
    assert "together is 30.0 dB from fp32: the next pair" in caplog.text
    assert "no pair passes together" not in caplog.text
    assert second.served_psnr_fp32 is not None and second.served_psnr_fp32 >= MIN_PSNR_FROM_FP32
    caplog.clear()
    monkeypatch.setattr(select_module, "psnr", lambda a, b: 30.0)
    with caplog.at_level("WARNING", logger=select_module.LOG.name):
        none = choose(referenced_avatar, "auto", "auto", "cpu", 1, tmp_path / "b")
    assert "no pair passes together: torch fp32" in caplog.text
    assert none.choice == BackendChoice() and none.served_psnr_fp32 == gate_module.PSNR_CAP


def test_a_choice_measured_on_a_busy_machine_is_used_but_not_cached(
    referenced_avatar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select_module.OtherLoad, "cores", lambda self: 1.6)
    cache = tmp_path / "cache"
    busy = choose(referenced_avatar, "fp32", "openvino", "cpu", 1, cache)
    assert busy.source == "measured" and busy.other_cores == 1.6 and busy.contended
    assert busy.choice.generator == StageChoice("openvino", "fp32")
    assert not list(cache.glob("*/selection.json"))
    assert "1.6 cores busy: not cached" in select_module.summary_line(busy)
    assert busy.to_dict()["other_cores"] == 1.6
    monkeypatch.setattr(select_module.OtherLoad, "cores", lambda self: 0.1)
    quiet = choose(referenced_avatar, "fp32", "openvino", "cpu", 1, cache)
    assert quiet.source == "measured" and not quiet.contended
    again = choose(referenced_avatar, "fp32", "openvino", "cpu", 1, cache)
    assert again.source == "cache" and again.other_cores == 0.1


def test_an_avatar_without_reference_frames_is_judged_on_states_without_int8(
    tmp_path: Path,
) -> None:
    from tests.conftest import save_untrained_avatar

    path = save_untrained_avatar(tmp_path / "plain.pt")
    selection = choose(path, "auto", "onnxruntime", "cpu", 1, tmp_path / "cache")
    assert selection.gate == "states"
    int8 = next(f for f in selection.figures if (f.runtime, f.precision) == ("onnxruntime", "int8"))
    assert int8.ms is None and "calibrates on the avatar's own frames" in (int8.reason or "")
    assert selection.choice.generator.runtime == "onnxruntime"
    assert all(f.truth_loss_db is None for f in selection.figures if f.ms is not None)


def test_workers_render_through_a_runtime(referenced_avatar: Path, tmp_path: Path) -> None:
    selection = choose(referenced_avatar, "fp32", "openvino", "cpu", 1, tmp_path / "cache")
    assert selection.choice.generator == StageChoice("openvino", "fp32")
    settings = PipelineSettings(
        referenced_avatar, Schedule("sequential", 1, 2), threads=1, backend=selection.choice
    )
    avatar = Avatar.load(referenced_avatar)
    names = avatar.expression_names
    with Pipeline(settings) as pipeline:
        session = pipeline.open_session()
        for seq in range(1, 5):
            pipeline.submit(session, seq, update(avatar.rest, names, pose={"yaw": seq * 2.0}))
            frame = pipeline.get(session, timeout=60)
            assert frame is not None and frame.image.shape == (64, 64, 3)
        assert pipeline.errors(session) == []


def test_a_collapsed_texture_samples_like_its_pyramid() -> None:
    from engine.render.networks.texture import NeuralTexture

    torch.manual_seed(0)
    texture = NeuralTexture(PRESETS["tiny"])
    uv = torch.rand(2, 16, 16, 2)
    mask = torch.rand(2, 16, 16) > 0.3
    view = torch.nn.functional.normalize(torch.randn(2, 3), dim=-1)
    flat = texture.collapsed()
    assert len(flat.levels) == 1 and flat.config.texture_levels == 1
    exact, approx = texture(uv, mask, view), flat(uv, mask, view)
    # Between texels the two differ (bilinear of a bilinear upsample): a little, even for
    # coarse levels of white noise (a trained pyramid's are smoother: 3% on the shipped avatar).
    assert float((exact - approx).norm() / exact.norm()) < 0.25
    # Constant coarse levels are reproduced exactly, and collapsing twice changes nothing.
    with torch.no_grad():
        for level in texture.levels[1:]:
            level.fill_(0.25)
    flat = texture.collapsed()
    assert torch.allclose(texture(uv, mask, view), flat(uv, mask, view), atol=1e-5)
    assert torch.equal(flat.collapsed().levels[0], flat.levels[0])


def test_int8_keeps_the_generators_early_blocks_in_float(
    referenced_avatar: Path, tmp_path: Path
) -> None:
    import onnx

    from engine.render.backends.gate import generator_inputs
    from engine.render.backends.graphs import export_generator
    from engine.render.backends.quantize import (
        GENERATOR_FLOAT_BLOCKS,
        GENERATOR_OP_TYPES,
        convs_in,
        quantize_int8,
    )

    avatar = Avatar.load(referenced_avatar).prepare_for_inference()
    ref = avatar.reference
    assert ref is not None
    with torch.inference_mode():
        x = ref.inputs(avatar.head, avatar.camera, avatar.resolution, [0, 1])
        gen_in = generator_inputs(avatar, x)
    source = export_generator(avatar.generator, gen_in[:1], x.controls[:1], tmp_path)
    kept = convs_in(source, GENERATOR_FLOAT_BLOCKS)
    assert kept and all("/encoder.0/" in n or "/encoder.1/" in n for n in kept)
    feeds = [
        {"x": gen_in[i : i + 1].float().numpy(), "controls": x.controls[i : i + 1].float().numpy()}
        for i in range(2)
    ]
    target = quantize_int8(
        source,
        tmp_path / "int8.onnx",
        feeds,
        keep_float=kept,
        percentile=True,
        op_types=GENERATOR_OP_TYPES,
    )
    graph = onnx.load(str(target)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    for name, conv in convs.items():  # a quantized conv reads through DequantizeLinear nodes
        assert (conv.input[1] in dequantized) == (name not in kept), name
    # The activations between the float blocks stay float: only what enters a quantized conv is.
    assert all(convs[name].input[0] not in dequantized for name in kept)
    assert len(convs) > len(kept)
