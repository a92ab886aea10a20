"""The quality gate: what every candidate backend renders, and whether its pictures pass.

A candidate renders the gate frames (the avatar's held-out reference frames: generator frames and
warps at the served distances, engine/render/backends/reference.py; without them, states around the
avatar's rest) and is compared with torch fp32's pictures of the same frames and, where the file
holds them, with the true crops: it passes with >= MIN_PSNR_FROM_FP32 dB from fp32 and at most
MAX_TRUTH_LOSS_DB of PSNR lost against the truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.controls import Controls, update
from engine.render.avatar import Avatar
from engine.render.backends.stages import GeneratorFn, StageChoice, WarpFn
from engine.render.frame_inputs import FrameInputs
from engine.render.networks.generator import generator_input, make_cache
from engine.render.networks.texture import NeuralTexture
from engine.render.neural_cache import NeuralCache

MIN_PSNR_FROM_FP32 = 40.0  # dB: the gate; bf16 on the shipped avatar gives ~57-72
MAX_TRUTH_LOSS_DB = 0.2  # dB of PSNR against the true crops
PSNR_CAP = 99.0  # identical pictures report this instead of infinity


@dataclass(frozen=True)
class StageFigures:
    """One candidate for one stage: its time, its gate figures, and whether it passed.

    ms: median time of the stage at batch 1; psnr_fp32: dB from torch fp32's pictures (PSNR_CAP
    when identical); truth_loss_db: PSNR against the true crops lost against torch fp32 (None
    without true crops); passed: both gate figures within bounds; reason: why not measured or why
    refused (None when it passed)."""

    stage: str
    runtime: str
    precision: str
    ms: float | None
    psnr_fp32: float | None
    truth_loss_db: float | None
    passed: bool
    reason: str | None = None
    form: str | None = None  # the texture stage's form (TEXTURES); None for the networks
    # The warp's `prepare` of one cache (paid once per generator frame, like the generator): None
    # for the other stages and for warps that prepare nothing
    prepare_ms: float | None = None


@dataclass(frozen=True)
class GateFrames:
    """What every candidate renders: generator anchors and warp pairs, with fp32's pictures.

    anchors: FrameInputs of the cache frames (B); targets: FrameInputs of the later frames (P)
    with `pair_anchor` (P,) the anchor each warps from; truth_anchor (B, 3, H, W) and
    truth_target (P, 3, H, W) true crops or None."""

    anchors: FrameInputs
    targets: FrameInputs
    pair_anchor: list[int]
    truth_anchor: torch.Tensor | None
    truth_target: torch.Tensor | None
    kind: str


def gate_frames(avatar: Avatar) -> GateFrames:
    """The reference frames' held-out pairs, or states around the avatar's rest without them."""
    ref = avatar.reference
    if ref is not None:
        pairs = ref.held_out.tolist()
        anchors = sorted({a for a, _ in pairs})
        where = {a: i for i, a in enumerate(anchors)}
        make = lambda rows: ref.inputs(avatar.head, avatar.camera, avatar.resolution, rows)  # noqa: E731
        return GateFrames(
            anchors=make(anchors),
            targets=make([b for _, b in pairs]),
            pair_anchor=[where[a] for a, _ in pairs],
            truth_anchor=ref.truth_images(anchors),
            truth_target=ref.truth_images([b for _, b in pairs]),
            kind="held-out frames",
        )
    states = gate_states(avatar)
    return GateFrames(
        anchors=avatar.inputs(states[:-1]),
        targets=avatar.inputs(states[1:]),
        pair_anchor=list(range(len(states) - 1)),
        truth_anchor=None,
        truth_target=None,
        kind="states",
    )


def gate_states(avatar: Avatar) -> list[Controls]:
    """Rest, the mouth open, a smile, closed eyes and the head turned to its offered limits."""
    names = avatar.expression_names
    rest = avatar.rest
    limits = avatar.pose_range_deg or {"yaw": [-15.0, 15.0], "pitch": [-10.0, 10.0]}
    wanted = [
        {"jawOpen": 1.0},
        {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},
        {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0},
    ]
    states = [rest]
    for expression in wanted:
        known = {k: v for k, v in expression.items() if k in names}
        if known:
            states.append(update(rest, names, expression=known))
    for axis in ("yaw", "pitch"):
        for end in limits[axis]:
            states.append(update(rest, names, pose={axis: 0.8 * float(end)}))
    return states


def frame_rows(x: FrameInputs, index: Sequence[int]) -> FrameInputs:
    i = torch.as_tensor(list(index), dtype=torch.long)
    return FrameInputs(
        uv=x.uv[i],
        mask=x.mask[i],
        screen=x.screen[i],
        fragments=x.fragments,  # only the explicit warp reads fragments, through pixel_motion
        controls=x.controls[i],
        view_dir=x.view_dir[i],
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))


def generator_inputs(
    avatar: Avatar, x: FrameInputs, texture: NeuralTexture | None = None
) -> torch.Tensor:
    features = (texture or avatar.texture)(x.uv, x.mask, x.view_dir)  # (B, C, H, W)
    return generator_input(features, x.mask).contiguous(memory_format=avatar.memory_format)


def generated(
    avatar: Avatar, gen: GeneratorFn, x: FrameInputs, gen_in: torch.Tensor, i: int
) -> tuple[torch.Tensor, NeuralCache]:
    one = frame_rows(x, [i])
    out = gen(gen_in[i : i + 1], one.controls)
    cache = make_cache(out, avatar.config.cache_layers, one.uv, one.mask, one.controls, one.screen)
    return avatar.composite(out.rgb.float(), out.alpha.float()).image, cache


def warped(
    avatar: Avatar, warp: WarpFn, cache: NeuralCache, x: FrameInputs, j: int
) -> torch.Tensor:
    one = frame_rows(x, [j])
    out = warp(cache, one.uv, one.mask, one.controls, None)
    return avatar.composite(out.rgb.float(), out.alpha.float()).image


def judge(
    stage: str,
    choice: StageChoice,
    images: torch.Tensor,
    reference: torch.Tensor,
    truth: torch.Tensor | None,
    ms: float,
) -> StageFigures:
    """The gate's verdict on `images` of one candidate against fp32's `reference` and `truth`."""
    from_fp32 = round(psnr(images, reference), 2)
    loss = None
    if truth is not None:
        loss = round(psnr(reference, truth) - psnr(images, truth), 3)
    passed = from_fp32 >= MIN_PSNR_FROM_FP32 and (loss is None or loss <= MAX_TRUTH_LOSS_DB)
    reason = None
    if not passed:
        reason = f"{from_fp32} dB from fp32" + (
            "" if loss is None else f", {loss} dB lost to truth"
        )
    return StageFigures(
        stage, choice.runtime, choice.precision, ms, from_fp32, loss, passed, reason
    )
