"""The warp as served, against its own generator: no captured frame, only the served framing, pose
and rest expression, over small moves of the kind live-by-need warps across.

Validation and test frames cannot show what this does. On the 820-minute avatar a warp drew the
served rest face from its own cache with the background painted into his hair (a dark-blue streak
on the viewer's right) while every captured frame's warp was clean: the warp was trained from 4-8
frames apart on the clip's poses, half of them mirrored, and the served rest (facing the camera) lies
at the edge of what the clip shows.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.controls import update
from engine.render.avatar import Avatar
from engine.render.frame import to_image

# Served moves, each within half the jump limit (what live-by-need warps across before it starts
# a cache): (from, to) as (viewer's yaw, expression weights). The turns reach past what the clip
# shows, as the page's slider does.
_SMILE, _BLINK = ("mouthSmileLeft", "mouthSmileRight"), ("eyeBlinkLeft", "eyeBlinkRight")
Move = tuple[tuple[float, dict[str, float]], tuple[float, dict[str, float]]]
SERVED_MOVES: tuple[Move, ...] = (
    *(((yaw - 5.0, {}), (yaw, {})) for yaw in (-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0)),
    *(((0.0, {"jawOpen": a}), (0.0, {"jawOpen": a + 0.15})) for a in (0.0, 0.15, 0.3)),
    *(((0.0, dict.fromkeys(_SMILE, a)), (0.0, dict.fromkeys(_SMILE, a + 0.15))) for a in (0.0, 0.3)),
    *(((0.0, dict.fromkeys(_BLINK, a)), (0.0, dict.fromkeys(_BLINK, a + 0.15))) for a in (0.0, 0.3)),
)  # fmt: skip


@torch.inference_mode()
def served_warps(avatar: Avatar) -> tuple[float, np.ndarray]:
    """For each of SERVED_MOVES, the frame warped from the cache of the move's start against the
    generator's frame of its end. Returns their mean PSNR (dB) and a picture: the generator's
    frames above, the warped ones below."""
    rest, names = avatar.rest, avatar.expression_names
    scores, truths, warps = [], [], []
    for (yaw0, weights0), (yaw1, weights1) in SERVED_MOVES:
        start = update(rest, names, pose={"yaw": yaw0}, expression=weights0)
        end = update(rest, names, pose={"yaw": yaw1}, expression=weights1)
        _, cache = avatar.generate(avatar.inputs([start]))
        x = avatar.inputs([end])
        truth = avatar.generate(x, prepare=False)[0].image.float().clamp(0, 1)
        warped = avatar.warp(cache, x).image.float().clamp(0, 1)
        mse = float(((truth - warped) ** 2).mean())
        scores.append(10.0 * np.log10(1.0 / max(mse, 1e-10)))
        truths.append(to_image(truth))
        warps.append(to_image(warped))
    rows = [np.concatenate(truths, axis=1), np.concatenate(warps, axis=1)]
    return round(float(np.mean(scores)), 3), np.concatenate(rows)
