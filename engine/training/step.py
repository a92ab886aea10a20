"""One optimiser step of training: the losses, a step of the whole avatar (generator, texture and
warp on pairs (t, t + k)), and a step of the warp alone (`--warp-only`)."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from engine.render.avatar import Avatar
from engine.render.frame_inputs import FrameInputs
from engine.training.adversarial import Critic
from engine.training.dataset import CaptureFrames
from engine.training.settings import (
    DEFAULT_FACE_WEIGHT,
    DEFAULT_GRADIENT_WEIGHT,
    DEFAULT_SSIM_WEIGHT,
    TrainSettings,
)

TEXTURE_WEIGHT = 0.5  # texture colour loss, early guidance for the neural texture


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> horizontal (B, C, H, W - 1) and vertical (B, C, H - 1, W) differences."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def losses(
    pred: torch.Tensor,
    target: torch.Tensor,
    face: torch.Tensor,
    face_weight: float = DEFAULT_FACE_WEIGHT,
    gradient_weight: float = DEFAULT_GRADIENT_WEIGHT,
    ssim_weight: float = DEFAULT_SSIM_WEIGHT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, plain L1) of (B, 3, H, W) images in [0, 1]; face (B, 1, H, W) in [0, 1] marks the
    pixels that count 1 + face_weight times in the L1 and gradient terms; the structural term
    (1 - SSIM over the whole frame) counts ssim_weight."""
    pred = pred.float()
    weight = 1.0 + face_weight * face  # (B, 1, H, W)
    diff = (pred - target).abs()
    l1 = diff.mean()
    weighted = (diff * weight).mean() / weight.mean()
    loss = weighted
    if gradient_weight > 0:
        (pdx, pdy), (tdx, tdy) = image_gradients(pred), image_gradients(target)
        wx = (weight[..., :, 1:] + weight[..., :, :-1]) / 2
        wy = (weight[..., 1:, :] + weight[..., :-1, :]) / 2
        grad = ((pdx - tdx).abs() * wx).mean() / wx.mean()
        grad = grad + ((pdy - tdy).abs() * wy).mean() / wy.mean()
        loss = loss + gradient_weight * grad
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0)
    assert isinstance(ssim, torch.Tensor)
    return loss + ssim_weight * (1.0 - ssim), l1


def train_step(
    avatar: Avatar,
    optimizer: torch.optim.Optimizer,
    frames: CaptureFrames,
    t_rows: torch.Tensor,
    tk_rows: torch.Tensor,
    affine: torch.Tensor | None,
    device: torch.device,
    settings: TrainSettings,
    critic: Critic | None = None,
    mirrored: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One optimiser step on pairs (t, t + k), those where `mirrored` (B,) is set seen in a
    mirror, and one of the critic when there is one; returns the generator's and the warp's L1."""
    with torch.no_grad():
        x_t = frames.inputs(t_rows, affine, settings.geometry, mirrored)
        x_tk = frames.inputs(tk_rows, affine, settings.geometry, mirrored)
        y_t = frames.targets(t_rows, affine, mirrored).to(device)
        y_tk = frames.targets(tk_rows, affine, mirrored).to(device)
    bf16 = settings.precision == "bf16"
    if settings.warp_only:
        return warp_step(avatar, optimizer, x_t, x_tk, y_t, y_tk, device, settings, critic)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        full, cache = avatar.generate(x_t)
        warped = avatar.warp(cache, x_tk)
    weights = (settings.face_weight, settings.gradient_weight, settings.ssim_weight)
    loss_g, l1_g = losses(full.image, y_t, x_t.mask[:, None].float(), *weights)
    loss_w, l1_w = losses(warped.image, y_tk, x_tk.mask[:, None].float(), *weights)
    tex = avatar.texture_rgb(x_t)  # (B, 3, H, W)
    covered = x_t.mask[:, None].to(tex.dtype)  # (B, 1, H, W)
    loss_tex = ((tex - y_t).abs() * covered).sum() / covered.sum().clamp_min(1.0) / 3.0
    loss = loss_g + loss_w + TEXTURE_WEIGHT * loss_tex
    if critic is not None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            fooled = critic.generator_loss(full.image) + critic.generator_loss(warped.image)
        loss = loss + settings.adversarial * fooled
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if critic is not None:
        fake = torch.cat((full.image, warped.image)).detach().float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            critic.step(torch.cat((y_t, y_tk)), fake)
    return float(l1_g.detach()), float(l1_w.detach())


def warp_step(
    avatar: Avatar,
    optimizer: torch.optim.Optimizer,
    x_t: FrameInputs,
    x_tk: FrameInputs,
    y_t: torch.Tensor,
    y_tk: torch.Tensor,
    device: torch.device,
    settings: TrainSettings,
    critic: Critic | None,
) -> tuple[float, float]:
    """`train_step` for the warp alone: the cache is made as served (texture and generator in
    eval mode, no gradient: their BatchNorms use and keep their running statistics), and only
    the warp's loss (and the critic's verdict on warped frames) moves the warp."""
    bf16 = settings.precision == "bf16"
    avatar.texture.eval()
    avatar.generator.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            full, cache = avatar.generate(x_t)
        warped = avatar.warp(cache, x_tk)
    weights = (settings.face_weight, settings.gradient_weight, settings.ssim_weight)
    loss, l1_w = losses(warped.image, y_tk, x_tk.mask[:, None].float(), *weights)
    if critic is not None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss + settings.adversarial * critic.generator_loss(warped.image)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if critic is not None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            critic.step(y_tk, warped.image.detach().float())
    l1_g = (full.image.float() - y_t).abs().mean()
    return float(l1_g), float(l1_w.detach())
