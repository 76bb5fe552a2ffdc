"""Helpers every architecture shares: layer widths and init (the resolution rule is the spec's)."""
from __future__ import annotations

from typing import Callable

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
