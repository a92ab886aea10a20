"""engine.training.train.losses: plain L1 + SSIM by default; the face weight and the gradient term
do what they say."""

from __future__ import annotations

import pytest
import torch

from engine.training.settings import DEFAULT_SSIM_WEIGHT
from engine.training.step import losses


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    face = torch.zeros(2, 1, 32, 32)
    face[..., 8:24, 8:24] = 1.0
    return target, face, target.clone()


def test_defaults_are_l1_and_ssim() -> None:
    target, face, pred = _pair()
    pred[..., :4, :4] += 0.3
    loss, l1 = losses(pred, target, face)
    assert float(l1) == pytest.approx(float((pred - target).abs().mean()))
    assert float(loss) > float(l1) and float(loss) < float(l1) + DEFAULT_SSIM_WEIGHT


def test_an_error_on_the_face_costs_more_with_a_face_weight() -> None:
    target, face, pred = _pair()
    on_face, off_face = pred.clone(), pred.clone()
    on_face[..., 10:14, 10:14] += 0.3
    off_face[..., 0:4, 0:4] += 0.3
    weighted = [float(losses(p, target, face, face_weight=4.0)[0]) for p in (on_face, off_face)]
    plain = [float(losses(p, target, face)[0]) for p in (on_face, off_face)]
    assert weighted[0] > weighted[1]
    assert plain[0] == pytest.approx(plain[1], rel=0.05)


def test_the_gradient_term_punishes_blur_more_than_l1_does() -> None:
    target, face, _ = _pair()
    blurred = torch.nn.functional.avg_pool2d(target, 3, 1, 1, count_include_pad=False)
    plain, _ = losses(blurred, target, face)
    sharp, _ = losses(blurred, target, face, gradient_weight=1.0)
    assert float(sharp) > float(plain) + 0.1


def test_a_heavier_structural_term_costs_more_for_the_same_picture() -> None:
    target, face, pred = _pair()
    pred[..., 4:20, 4:20] = pred[..., 4:20, 4:20].mean()  # structure gone, colour about kept
    light, l1 = losses(pred, target, face, ssim_weight=0.2)
    heavy, _ = losses(pred, target, face, ssim_weight=1.0)
    none, _ = losses(pred, target, face, ssim_weight=0.0)
    assert float(none) == pytest.approx(float(l1))
    assert float(heavy) - float(none) == pytest.approx(5 * (float(light) - float(none)), rel=1e-4)
