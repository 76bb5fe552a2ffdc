"""Networks: generators and discriminators. They know neither losses nor the loop."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _channels(resolution: int, base: int, cap: int = 512):
    return lambda r: min(cap, base * (resolution // r))


class DcganGenerator(nn.Module):
    """DCGAN generator: z -> 4x4 -> (transposed conv, BN, ReLU) per doubling -> RGB in [-1, 1]."""

    def __init__(self, z_dim: int, resolution: int, channels: int = 64):
        super().__init__()
        self.config = {"arch": "dcgan", "z_dim": z_dim, "resolution": resolution, "channels": channels}
        self.z_dim, self.resolution = z_dim, resolution
        ch = _channels(resolution, channels)
        self.c4 = ch(4)
        self.fc = nn.Sequential(nn.Linear(z_dim, self.c4 * 16, bias=False), nn.BatchNorm1d(self.c4 * 16), nn.ReLU())
        layers: list[nn.Module] = []
        r = 4
        while r < resolution:
            layers += [nn.ConvTranspose2d(ch(r), ch(2 * r), 4, 2, 1, bias=False), nn.BatchNorm2d(ch(2 * r)), nn.ReLU()]
            r *= 2
        layers += [nn.Conv2d(ch(resolution), 3, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(-1, self.c4, 4, 4))


class DcganDiscriminator(nn.Module):
    """DCGAN discriminator: RGB -> (strided conv, LeakyReLU) per halving -> 4x4 -> one logit."""

    def __init__(self, resolution: int, channels: int = 64):
        super().__init__()
        ch = _channels(resolution, channels)
        layers: list[nn.Module] = [nn.Conv2d(3, ch(resolution), 3, 1, 1), nn.LeakyReLU(0.2)]
        r = resolution
        while r > 4:
            layers += [nn.Conv2d(ch(r), ch(r // 2), 4, 2, 1), nn.LeakyReLU(0.2)]
            r //= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch(4) * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).squeeze(1)


def check_resolution(resolution: int) -> None:
    if resolution < 16 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two from 16 to 1024, got {resolution}")


def build_generator(config: dict[str, Any]) -> nn.Module:
    """A generator from its config (what ``generator.config`` holds), freshly initialised."""
    check_resolution(config["resolution"])
    if config["arch"] == "dcgan":
        return DcganGenerator(config["z_dim"], config["resolution"], config["channels"])
    raise ValueError(f"unknown generator arch {config['arch']!r}")


def build_models(model: dict[str, Any], resolution: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) for the spec's model section at resolution, initialised as DCGAN does."""
    g = build_generator({"arch": model["arch"], "z_dim": model["z_dim"], "resolution": resolution,
                         "channels": model["channels"]})
    d = DcganDiscriminator(resolution, model["channels"])
    for m in (*g.modules(), *d.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    assert math.log2(resolution).is_integer()
    return g, d
