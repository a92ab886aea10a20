"""The adversarial patch critic: it learns to tell two kinds of picture apart, and training with it
runs, checkpoints and resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from engine.training.adversarial import Critic, PatchCritic
from engine.training.train import TrainSettings, train


def test_the_critic_scores_patches_and_learns_sharp_from_blurred() -> None:
    torch.manual_seed(0)
    assert PatchCritic()(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 4, 4)
    critic = Critic.create(torch.device("cpu"))
    sharp = (torch.rand(4, 3, 64, 64) > 0.5).float()  # high-frequency detail
    blurred = torch.nn.functional.avg_pool2d(sharp, 9, 1, 4)  # the same, blurred
    for _ in range(30):
        critic.step(sharp, blurred)
    with torch.no_grad():
        assert float(critic.net(sharp).mean()) > float(critic.net(blurred).mean())
        # The renderer's side of the loss is lower for the picture the critic takes for real.
        assert float(critic.generator_loss(sharp)) < float(critic.generator_loss(blurred))


def test_training_with_the_critic_checkpoints_and_resumes(short_capture: Path, tmp_path: Path):
    settings = TrainSettings(
        preset="tiny", steps=2, max_minutes=5.0, batch=2, max_k=2, lr=1e-3, seed=1,
        cache_layers=("c3",), warp_kind="implicit", adversarial=0.05,
    )  # fmt: skip
    out = tmp_path / "adv.pt"
    cpu = torch.device("cpu")
    train(short_capture, out, settings, cpu, progress=False)
    ckpt = torch.load(out.with_suffix(".ckpt"), weights_only=True)
    assert set(ckpt["critic"]) == {"net", "optimizer"}
    resumed = train(
        short_capture, out, dataclasses.replace(settings, steps=3), cpu, resume=True,
        progress=False,
    )  # fmt: skip
    assert resumed.summary["steps"] == 3 and resumed.summary["settings"]["adversarial"] == 0.05
    assert not any(k.startswith("critic") for k in resumed.state_dict())  # not in the avatar
