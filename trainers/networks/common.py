"""Helpers every architecture shares: layer widths, init, text conditioning augmentation (the resolution rule is
the spec's)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def channel_widths(resolution: int, channels: int, channels_max: int = 512) -> Callable[[int], int]:
    """Width at feature-map size r: ``channels`` at full resolution, doubling per halving, capped."""
    return lambda r: min(channels_max, channels * (resolution // r))


def dcgan_init(*modules: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for every conv and linear layer, as DCGAN does."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class ConditioningAugmentation(nn.Module):
    """StackGAN's conditioning augmentation: a linear map from a text embedding to (mu, log sigma^2).

    In training the generator joins a reparameterised sample mu + sigma * eps to z (``loss.py``
    draws eps and adds the KL term); in eval mode, and so in every exported or sampled
    generator, c is mu: the same seed and prompt always give the same image. The unit-norm
    embedding is rescaled to unit variance per component (x sqrt(text_dim)) before the map, so
    that its weights learn at the pace of a tag embedding's under Adam (the updates are the same
    size; the inputs would be 20x smaller) and mu starts above the noise.
    """

    def __init__(self, text_dim: int, out_dim: int):
        super().__init__()
        self.text_dim, self.out_dim, self.scale = text_dim, out_dim, math.sqrt(text_dim)
        self.fc = nn.Linear(text_dim, out_dim * 2)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2), each (N, out_dim)."""
        mu, logvar = self.fc(emb.float() * self.scale).chunk(2, dim=1)
        return mu, logvar

    def sample(self, emb: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
        """(c, mu, logvar): c = mu + exp(logvar / 2) * eps with eps given (training), else mu."""
        mu, logvar = self(emb)
        c = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps.to(mu)
        return c, mu, logvar
