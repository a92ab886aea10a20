"""An adversarial patch loss: a small critic that tells real crops from rendered ones patch by
patch, so that the renderer is rewarded for detail that L1 and SSIM let it blur away (blur scores
well on PSNR and badly with people; no pretrained perceptual network can be loaded here).

PatchGAN-style (pix2pix): strided convs down to a map of scores, one per ~70-pixel patch;
spectral normalisation on every conv keeps the critic Lipschitz, which with the hinge loss keeps
training stable without tuning (SNGAN). The critic is trained only while the avatar trains and is
not part of the avatar file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

LEAKY_SLOPE = 0.2
CRITIC_WIDTHS = (32, 64, 128, 256)  # channels after each stride-2 conv
CRITIC_LR = 2e-4
CRITIC_BETAS = (0.5, 0.999)  # the usual GAN choice: little momentum against a moving target


class PatchCritic(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, 1, H/16, W/16) realness scores, one per patch."""

    def __init__(self, widths: tuple[int, ...] = CRITIC_WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)),
                nn.LeakyReLU(LEAKY_SLOPE),
            ]
            channels = width
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image * 2.0 - 1.0)  # (B, 1, H/16, W/16)


@dataclass
class Critic:
    """The critic and its own optimiser (hinge loss on both sides)."""

    net: PatchCritic
    optimizer: torch.optim.Optimizer

    @staticmethod
    def create(device: torch.device) -> Critic:
        net = PatchCritic().to(device)
        return Critic(net, torch.optim.Adam(net.parameters(), lr=CRITIC_LR, betas=CRITIC_BETAS))

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """What the renderer minimises: minus the critic's score of its pictures."""
        return -self.net(fake).float().mean()

    def step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One critic update on (B, 3, H, W) real and (detached) rendered pictures; its loss."""
        loss = F.relu(1.0 - self.net(real).float()).mean()
        loss = loss + F.relu(1.0 + self.net(fake.detach()).float()).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
