"""Helpers every architecture shares: layer widths and the resolution rule."""
from __future__ import annotations

from typing import Callable

from torch import nn


def check_resolution(resolution: int) -> None:
    """Raises ValueError unless resolution is a power of two from 16 to 1024."""
    if not isinstance(resolution, int) or resolution < 16 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two from 16 to 1024, got {resolution}")


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
