"""Choose how each stage runs on this machine, by measurement: time every candidate backend, judge
its pictures (engine/render/backends/gate.py), take the fastest that passes.

    candidates  torch fp32 (the reference), torch bf16 (native bf16 CPU, or CUDA), torch fp16
                (CUDA), onnxruntime fp32 / int8, openvino fp32 / bf16 / int8 (CPU)
    gate        on the avatar's held-out reference frames (engine/render/backends/reference.py):
                >= MIN_PSNR_FROM_FP32 dB from torch fp32's pictures, and <= MAX_TRUTH_LOSS_DB
                less PSNR against the true crops than torch fp32 (where the file holds them)
    timing      median of a stage's call at batch 1 with the worker's thread count

Each stage is judged on its own (lowering one stage is not lowering the other: MEASURED.md); the
texture's form, the generator and the warp are then chosen together, as the least work per output
frame (a warp, and a share of a generator frame), the warps timed on each generator's own caches
(their type and layout decide what a warp pays to read them), and the chosen set is checked
together against the gate. The result, and the exported and quantized models it needs, are cached under
`cache_root/<key>/`, the key a hash of the avatar file, the CPU's model and flags, the library
versions, the device, the threads and the request: a second start-up reads it in milliseconds,
another machine, avatar or library version measures again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine.cpu import OtherLoad, cpu_info, has_native_bf16
from engine.render.avatar import Avatar
from engine.render.backends.gate import (
    MIN_PSNR_FROM_FP32,
    PSNR_CAP,
    GateFrames,
    StageFigures,
    frame_rows,
    gate_frames,
    generated,
    generator_inputs,
    judge,
    psnr,
    warped,
)
from engine.render.backends.graphs import WARP_INPUTS, export_generator, export_warp
from engine.render.backends.load import generator_stage, warp_stage
from engine.render.backends.quantize import (
    GENERATOR_FLOAT_BLOCKS,
    GENERATOR_OP_TYPES,
    convs_in,
    quantize_int8,
)
from engine.render.backends.runtimes import (
    PRECISIONS_OF,
    as_array,
    model_file,
    runtime_available,
)
from engine.render.backends.stages import (
    PRECISIONS,
    RUNTIMES,
    STAGES,
    TORCH_FP32,
    BackendChoice,
    GeneratorFn,
    StageChoice,
    WarpFn,
    unchanged,
)
from engine.render.frame_inputs import FrameInputs
from engine.render.networks.warp import ImplicitWarp
from engine.render.neural_cache import NeuralCache

TIMING_RUNS = {"generator": 12, "warp": 24}
WARMUP_RUNS = 3
CHOICES = ("auto", *PRECISIONS)
RUNTIME_CHOICES = ("auto", *RUNTIMES)
SELECTION_FILE = "selection.json"
SELECTION_VERSION = 8  # bump when what is measured or how it is chosen changes: old caches go
# A measurement during which other processes kept more than this many cores busy is used for the
# run that made it but not cached: a choice timed beside a training run had picked a generator
# that took 44.6 ms there and is twice as slow as the one chosen on the idle machine.
MAX_OTHER_CORES = 0.5
MAX_PAIRS_CHECKED = 4  # generator-warp pairs checked together, cheapest first (each ~1 s)
DEFAULT_CACHE = Path(__file__).resolve().parents[3] / "data" / "cache" / "backends"
OFFERED = {"torch": ("fp32", "bf16", "fp16"), **PRECISIONS_OF}  # precisions each runtime has
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """The backends chosen, every candidate's figures, and how the choice was made."""

    choice: BackendChoice
    figures: tuple[StageFigures, ...]
    source: str  # "measured" now, or "cache" (measured by an earlier start on this machine)
    key: str
    gate: str  # what the gate judged on: "held-out frames" or "states" (no truth)
    served_psnr_fp32: float | None  # the chosen pair together (warps from its own caches)
    other_cores: float | None = None  # cores other processes kept busy while it was measured

    @property
    def contended(self) -> bool:
        """Measured while other work held the CPU: its times are not the machine's at rest."""
        return self.other_cores is not None and self.other_cores > MAX_OTHER_CORES

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.choice.to_dict(),
            "source": self.source,
            "key": self.key,
            "gate": self.gate,
            "served_psnr_fp32": self.served_psnr_fp32,
            "other_cores": self.other_cores,
            "candidates": [asdict(f) for f in self.figures],
        }

    def stage_ms(self, stage: str) -> float | None:
        """The measured time of the chosen form of `stage` (generator, warp, texture)."""
        chosen = self.choice.generator if stage == "generator" else self.choice.warp
        for f in self.figures:
            if f.stage != stage:
                continue
            if stage == "texture" and f.form == self.choice.texture:
                return f.ms
            if stage != "texture" and (f.runtime, f.precision) == (
                chosen.runtime,
                chosen.precision,
            ):
                return f.ms
        return None


# ------------------------------------------------------------------------------ candidates


def candidates(
    stage: str, device: torch.device, warp_kind: str, has_reference: bool
) -> list[tuple[StageChoice, str | None]]:
    """Every (runtime, precision) for `stage`, each with None or the reason it cannot run here."""
    out: list[tuple[StageChoice, str | None]] = []
    for runtime in RUNTIMES:
        for precision in OFFERED[runtime]:
            choice = StageChoice(runtime, precision)
            out.append((choice, _why_not(choice, stage, device, warp_kind, has_reference)))
    return out


def _why_not(
    choice: StageChoice, stage: str, device: torch.device, warp_kind: str, has_reference: bool
) -> str | None:
    cuda = device.type == "cuda"
    if choice.runtime == "torch":
        if choice.precision == "fp16" and not cuda:
            return "fp16 runs on CUDA only"
        if choice.precision == "bf16" and not cuda and not has_native_bf16():
            return "no native bf16 on this CPU (avx512_bf16, amx_bf16): emulated, far slower"
        return None
    if cuda:
        return f"{choice.runtime} runs on the CPU; this renderer is on {device}"
    if stage == "warp" and warp_kind != "implicit":
        return f"the {warp_kind} warp runs in torch only"
    if choice.precision == "bf16" and not has_native_bf16():
        return "no native bf16 on this CPU (avx512_bf16, amx_bf16)"
    if choice.precision == "int8" and not has_reference:
        return "int8 calibrates on the avatar's own frames, and this avatar file has none"
    return runtime_available(choice.runtime)


def requested(choice: StageChoice, precision: str, runtime: str) -> bool:
    return precision in ("auto", choice.precision) and runtime in ("auto", choice.runtime)


# ------------------------------------------------------------------------------ measuring


def _median_ms(run: Callable[[], object], runs: int) -> float:
    """Median wall time of `run` in ms (CUDA work waited for: a launch is not a frame)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(WARMUP_RUNS):
        run()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 2)


# ------------------------------------------------------------------------------ the choice


def selection_key(
    avatar_path: Path, device: str, threads: int, precision: str, runtime: str, num_warps: int
) -> str:
    digest = hashlib.sha256(avatar_path.read_bytes()).hexdigest()
    versions = {"torch": str(torch.__version__)}
    for name in ("onnxruntime", "openvino"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "absent"
    facts = [str(SELECTION_VERSION), digest, json.dumps(cpu_info(), sort_keys=True)]
    facts.append(json.dumps(versions, sort_keys=True))
    facts += [device, str(threads), precision, runtime, str(num_warps)]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def choose(
    avatar_path: Path,
    precision: str = "auto",
    runtime: str = "auto",
    device: str = "cpu",
    threads: int = 1,
    cache_root: Path | None = None,
    num_warps: int = 4,  # the server's default schedule (engine.pipeline.schedule)
) -> Selection:
    """The backends `avatar_path` renders with here: of the requested candidates whose pictures
    pass the gate, the pair with the least work per output frame (one warp and 1/num_warps of a
    generator pass; the generator alone when num_warps is 0). `precision` in CHOICES, `runtime`
    in RUNTIME_CHOICES; a request no candidate can meet fails naming each one's reason."""
    if precision not in CHOICES:
        raise ValueError(f"unknown precision {precision!r}: expected one of {CHOICES}")
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {runtime!r}: expected one of {RUNTIME_CHOICES}")
    if precision == "fp32" and runtime in ("auto", "torch"):  # nothing to measure or export
        return Selection(BackendChoice(), (), "requested", "", "none", None)
    key = selection_key(avatar_path, device, threads, precision, runtime, num_warps)
    folder = (cache_root or DEFAULT_CACHE) / key
    cached = _read_cached(folder)
    if cached is not None:
        return cached
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    load = OtherLoad()
    try:
        with torch.inference_mode():
            selection = _measure(
                num_warps,
                avatar_path,
                precision,
                runtime,
                torch.device(device),
                threads,
                folder,
                key,
            )
    finally:
        torch.set_num_threads(old_threads)
    selection = replace(selection, other_cores=load.cores())
    if not selection.contended:
        _write_cached(folder, selection)
    return selection


def _measure(
    num_warps: int,
    avatar_path: Path,
    precision: str,
    runtime: str,
    device: torch.device,
    threads: int,
    folder: Path,
    key: str,
) -> Selection:
    avatar = Avatar.load(avatar_path, device).prepare_for_inference()
    frames = gate_frames(avatar)
    gen_in = generator_inputs(avatar, frames.anchors)
    b = gen_in.shape[0]
    fp32_gen = generator_stage(avatar, TORCH_FP32, None, threads)
    fp32_warp = warp_stage(avatar, TORCH_FP32, None, threads)
    made = [generated(avatar, fp32_gen, frames.anchors, gen_in, i) for i in range(b)]
    caches = [c for _, c in made]
    gen_images = torch.cat([img for img, _ in made])
    pairs = list(enumerate(frames.pair_anchor))
    warp_images = torch.cat(
        [warped(avatar, fp32_warp, caches[a], frames.targets, j) for j, a in pairs]
    )

    wanted: dict[str, list[tuple[StageChoice, str | None]]] = {}
    for stage in STAGES:
        wanted[stage] = [
            (c, why)
            for c, why in candidates(
                stage, device, avatar.config.warp_kind, avatar.reference is not None
            )
            if requested(c, precision, runtime) or c == TORCH_FP32
        ]
    runnable = {c for stage in STAGES for c, why in wanted[stage] if why is None}
    if any(c.runtime != "torch" for c in runnable):
        _export(
            avatar, frames, gen_in, caches, folder, any(c.precision == "int8" for c in runnable)
        )

    figures: list[StageFigures] = []
    gen_fns: dict[StageChoice, GeneratorFn] = {}
    for choice, why in wanted["generator"]:
        if why is not None:
            figures.append(_skipped("generator", choice, why))
            continue
        gen = generator_stage(avatar, choice, folder, threads)
        images = torch.cat([generated(avatar, gen, frames.anchors, gen_in, i)[0] for i in range(b)])
        x0 = frame_rows(frames.anchors, [0])
        ms = _median_ms(lambda: gen(gen_in[:1], x0.controls), TIMING_RUNS["generator"])  # noqa: B023
        figures.append(judge("generator", choice, images, gen_images, frames.truth_anchor, ms))
        gen_fns[choice] = gen
        LOG.info("backend candidate: %s", _line(figures[-1]))
    gens = _passing(figures, "generator", precision, runtime)
    texture, texture_ms = _texture_form(avatar, frames, gen_images, fp32_gen, figures)
    # Warps are judged on fp32's caches (their own error alone) and timed on each passing
    # generator's cache (its layout and type: a runtime's warp on a torch bf16 cache pays for
    # converting it): the pair is chosen together.
    own = {g: generated(avatar, gen_fns[g], frames.anchors, gen_in, 0)[1] for g in gens}
    t0 = frame_rows(frames.targets, [0])
    warp_fns: dict[StageChoice, WarpFn] = {}
    warp_ms: dict[tuple[StageChoice, StageChoice], float] = {}
    prepare_ms: dict[tuple[StageChoice, StageChoice], float | None] = {}
    warp_figures: dict[StageChoice, StageFigures] = {}
    for choice, why in wanted["warp"]:
        if why is not None:
            figures.append(_skipped("warp", choice, why))
            continue
        warp = warp_stage(avatar, choice, folder, threads)
        images = torch.cat([warped(avatar, warp, caches[a], frames.targets, j) for j, a in pairs])
        for g, cache in own.items():
            # Timed as served: the cache prepared once (its cost goes with the generator's),
            # then warped from.
            prepared = warp.prepare(cache)
            run = lambda: warp(prepared, t0.uv, t0.mask, t0.controls, None)  # noqa: B023, E731
            warp_ms[(g, choice)] = _median_ms(run, TIMING_RUNS["warp"])
            prepare_ms[(g, choice)] = None
            if warp.prepare is not unchanged:
                prep = lambda: warp.prepare(cache)  # noqa: B023, E731
                prepare_ms[(g, choice)] = _median_ms(prep, TIMING_RUNS["warp"])
        warp_figures[choice] = judge("warp", choice, images, warp_images, frames.truth_target, 0.0)
        warp_fns[choice] = warp
    warps = _passing([*figures, *warp_figures.values()], "warp", precision, runtime)
    per_frame = {
        (g, w): warp_ms[(g, w)]
        + (texture_ms + gen_ms(figures, g) + (prepare_ms[(g, w)] or 0.0)) / max(num_warps, 1)
        for g in gens
        for w in warps
    }
    if num_warps == 0:  # the generator alone: its own time decides, the warp is never served
        per_frame = {(g, w): gen_ms(figures, g) + warp_ms[(g, w)] / 1e3 for g, w in per_frame}
    # Everything chosen together: the texture form, the generator and warps from its own caches.
    # Pairs are tried from the least work per frame on: two stages that pass alone may not pass
    # together (an int8 warp on a bf16 generator's caches), and then the next pair is the choice,
    # not fp32 for everything (which had served a 1-thread worker at twice the cost).
    served_in = gen_in
    if texture == "collapsed":
        served_in = generator_inputs(avatar, frames.anchors, avatar.texture.collapsed())
    ranked = sorted(per_frame, key=lambda pair: per_frame[pair])
    backend, served_psnr = BackendChoice(), PSNR_CAP
    gen_choice = ranked[0][0]
    made_by: dict[StageChoice, list[tuple[torch.Tensor, NeuralCache]]] = {}  # pairs share them
    for pair in ranked[:MAX_PAIRS_CHECKED]:
        gen, warp = gen_fns[pair[0]], warp_fns[pair[1]]
        if pair[0] not in made_by:
            made_by[pair[0]] = [
                generated(avatar, gen, frames.anchors, served_in, i) for i in range(b)
            ]
        made = made_by[pair[0]]
        served = torch.cat([warped(avatar, warp, made[a][1], frames.targets, j) for j, a in pairs])
        together = round(
            min(psnr(served, warp_images), psnr(torch.cat([m[0] for m in made]), gen_images)), 2
        )
        if together >= MIN_PSNR_FROM_FP32:
            exported = pair[0].runtime != "torch" or pair[1].runtime != "torch"
            backend = BackendChoice(pair[0], pair[1], folder if exported else None, texture)
            gen_choice, served_psnr = pair[0], together
            break
        LOG.warning(
            "backend: %s %s with %s %s together is %.1f dB from fp32: the next pair",
            *(pair[0].runtime, pair[0].precision, pair[1].runtime, pair[1].precision, together),
        )
    else:  # no pair among the cheapest passes together: keep what was trained
        LOG.warning("backend: no pair passes together: torch fp32")
    for w, f in warp_figures.items():
        figures.append(
            dataclasses.replace(
                f, ms=warp_ms[(gen_choice, w)], prepare_ms=prepare_ms[(gen_choice, w)]
            )
        )
        LOG.info("backend candidate: %s", _line(figures[-1]))
    return Selection(backend, tuple(figures), "measured", key, frames.kind, served_psnr)


def _texture_form(
    avatar: Avatar,
    frames: GateFrames,
    gen_images: torch.Tensor,
    fp32_gen: GeneratorFn,
    figures: list[StageFigures],
) -> tuple[str, float]:
    """Time the texture as trained and collapsed to one level, judge the collapsed one's pictures
    (through the fp32 generator), append both figures; the faster passing form and its time."""
    flat = avatar.texture.collapsed()
    x0 = frame_rows(frames.anchors, [0])
    times = {}
    for form, texture in (("pyramid", avatar.texture), ("collapsed", flat)):
        times[form] = _median_ms(
            lambda: texture(x0.uv, x0.mask, x0.view_dir),  # noqa: B023
            TIMING_RUNS["generator"],
        )
    inputs = generator_inputs(avatar, frames.anchors, flat)
    images = torch.cat(
        [generated(avatar, fp32_gen, frames.anchors, inputs, i)[0] for i in range(len(inputs))]
    )
    exact = TORCH_FP32
    figures.append(
        dataclasses.replace(
            judge("texture", exact, gen_images, gen_images, frames.truth_anchor, times["pyramid"]),
            form="pyramid",
        )
    )
    flat_figures = dataclasses.replace(
        judge("texture", exact, images, gen_images, frames.truth_anchor, times["collapsed"]),
        form="collapsed",
    )
    figures.append(flat_figures)
    LOG.info("backend candidate: %s", _line(flat_figures))
    if flat_figures.passed and times["collapsed"] < times["pyramid"]:
        return "collapsed", times["collapsed"]
    return "pyramid", times["pyramid"]


def _skipped(stage: str, choice: StageChoice, why: str) -> StageFigures:
    return StageFigures(stage, choice.runtime, choice.precision, None, None, None, False, why)


def _line(f: StageFigures) -> str:
    what = f.form or f"{f.runtime} {f.precision}"
    prepared = "" if f.prepare_ms is None else f" (+ {f.prepare_ms} ms per cache)"
    return f"{f.stage} {what} {f.ms} ms{prepared}, {f.reason or 'passed'}"


def gen_ms(figures: list[StageFigures], choice: StageChoice) -> float:
    for f in figures:
        if f.stage == "generator" and (f.runtime, f.precision) == (
            choice.runtime,
            choice.precision,
        ):
            return f.ms or math.inf
    return math.inf


def _passing(
    figures: list[StageFigures], stage: str, precision: str, runtime: str
) -> list[StageChoice]:
    """The requested candidates of `stage` that passed; none: an error naming each one's reason."""
    mine = [
        f for f in figures
        if f.stage == stage and requested(StageChoice(f.runtime, f.precision), precision, runtime)
    ]  # fmt: skip
    passing = [StageChoice(f.runtime, f.precision) for f in mine if f.passed and f.ms is not None]
    if not passing:
        table = "; ".join(f"{f.runtime} {f.precision}: {f.reason}" for f in mine)
        raise ValueError(
            f"no {stage} backend for --precision {precision} --runtime {runtime} passes on this "
            f"machine: {table or f'no {runtime} candidate runs {precision}'}"
        )
    return passing


def _export(
    avatar: Avatar,
    frames: GateFrames,
    gen_in: torch.Tensor,
    caches: list[NeuralCache],
    folder: Path,
    int8: bool,
) -> None:
    """The fp32 graphs, and their int8 quantization calibrated on the reference's training pairs."""
    x0 = frame_rows(frames.anchors, [0])
    export_generator(avatar.generator, gen_in[:1], x0.controls, folder)
    if isinstance(avatar.warp_net, ImplicitWarp):
        t0 = frame_rows(frames.targets, [0])
        export_warp(avatar.warp_net, _warp_tensors(caches[frames.pair_anchor[0]], t0), folder)
    if not int8:
        return
    ref = avatar.reference
    assert ref is not None  # candidates() offers int8 only with reference frames
    pairs = ref.calibration.tolist()
    cache_x = ref.inputs(avatar.head, avatar.camera, avatar.resolution, [a for a, _ in pairs])
    target_x = ref.inputs(avatar.head, avatar.camera, avatar.resolution, [b for _, b in pairs])
    cal_in = generator_inputs(avatar, cache_x)
    fp32_gen = generator_stage(avatar, TORCH_FP32, None, 1)
    gen_feeds, warp_feeds = [], []
    for i in range(len(pairs)):
        gen_feeds.append(
            {"x": as_array(cal_in[i : i + 1]), "controls": as_array(cache_x.controls[i : i + 1])}
        )
        _, cache = generated(avatar, fp32_gen, cache_x, cal_in, i)
        tensors = _warp_tensors(cache, frame_rows(target_x, [i]))
        warp_feeds.append({name: as_array(t) for name, t in zip(WARP_INPUTS, tensors, strict=True)})
    gen_fp32 = model_file(folder, "generator", "fp32")
    quantize_int8(
        gen_fp32,
        model_file(folder, "generator", "int8"),
        gen_feeds,
        keep_float=convs_in(gen_fp32, GENERATOR_FLOAT_BLOCKS),
        percentile=True,
        op_types=GENERATOR_OP_TYPES,
    )
    if avatar.config.warp_kind == "implicit":
        quantize_int8(
            model_file(folder, "warp", "fp32"), model_file(folder, "warp", "int8"), warp_feeds
        )


def _warp_tensors(cache: NeuralCache, x: FrameInputs) -> tuple[torch.Tensor, ...]:
    """The warp graph's inputs (WARP_INPUTS order) for warping `cache` to frame `x`."""
    zeros = cache.c3.new_zeros(1)
    return (
        cache.c3.float(),
        zeros if cache.c4 is None else cache.c4.float(),
        zeros if cache.c5 is None else cache.c5.float(),
        cache.uv,
        cache.mask.float(),
        cache.controls.float(),
        x.uv,
        x.mask.float(),
        x.controls,
    )


def _read_cached(folder: Path) -> Selection | None:
    path = folder / SELECTION_FILE
    try:
        data = json.loads(path.read_text())
        choice = BackendChoice(
            StageChoice(**data["generator"]),
            StageChoice(**data["warp"]),
            folder if data["model_dir"] else None,
            data.get("texture", "pyramid"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    needed = [
        model_file(folder, stage, c.precision)
        for stage, c in (("generator", choice.generator), ("warp", choice.warp))
        if c.runtime != "torch"
    ]
    if not all(p.exists() for p in needed):
        return None
    figures = tuple(StageFigures(**f) for f in data["candidates"])
    return Selection(
        choice,
        figures,
        "cache",
        data["key"],
        data["gate"],
        data["served_psnr_fp32"],
        data.get("other_cores"),
    )


def _write_cached(folder: Path, selection: Selection) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = selection.to_dict()
    data["model_dir"] = selection.choice.model_dir is not None
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, folder / SELECTION_FILE)


def summary_line(selection: Selection) -> str:
    """One line for the log: the choice and its times."""
    gen, warp = selection.stage_ms("generator"), selection.stage_ms("warp")
    texture = selection.stage_ms("texture")
    times = "" if gen is None else f" (texture {texture} ms, generator {gen} ms, warp {warp} ms)"
    busy = (
        f"; measured while other processes kept {selection.other_cores} cores busy: not cached"
        if selection.contended
        else ""
    )
    return (
        f"backend: {selection.choice.label}{times}, {selection.source}, gate on {selection.gate}"
        f"{busy}"
    )
