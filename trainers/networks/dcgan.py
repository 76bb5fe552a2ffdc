"""DCGAN (Radford et al. 2015): the unconditional baseline.

G: z -> 4x4 -> (transposed conv, BN, ReLU) per doubling -> RGB through tanh.
D: RGB -> (strided conv, LeakyReLU) per halving -> 4x4 -> one logit.
"""
from __future__ import annotations

import torch
from torch import nn

from trainers.networks.common import channel_widths


class DcganGenerator(nn.Module):
    """DCGAN generator; ``in_dim`` > z_dim lets a conditional generator feed [z, tag embedding]."""

    def __init__(self, z_dim: int, resolution: int, channels: int = 64, channels_max: int = 512,
                 in_dim: int | None = None):
        super().__init__()
        self.config = {"arch": "dcgan", "z_dim": z_dim, "resolution": resolution, "channels": channels,
                       "channels_max": channels_max}
        self.z_dim, self.c_dim, self.resolution = z_dim, 0, resolution
        ch = channel_widths(resolution, channels, channels_max)
        self.c4 = ch(4)
        self.fc = nn.Sequential(nn.Linear(in_dim or z_dim, self.c4 * 16, bias=False), nn.BatchNorm1d(self.c4 * 16),
                                nn.ReLU())
        layers: list[nn.Module] = []
        r = 4
        while r < resolution:
            layers += [nn.ConvTranspose2d(ch(r), ch(2 * r), 4, 2, 1, bias=False), nn.BatchNorm2d(ch(2 * r)), nn.ReLU()]
            r *= 2
        layers += [nn.Conv2d(ch(resolution), 3, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] for latents z (c is ignored: DCGAN is unconditional)."""
        return self.body(self.fc(z).view(-1, self.c4, 4, 4))


def trunk_blocks(body: nn.Sequential) -> list[nn.Module]:
    """The DCGAN trunk's blocks from the input side, one per halving: block 0 is the RGB conv with the first
    halving conv, each later one a halving conv (each conv with its activation); they share body's layers."""
    return [body[0:4]] + [body[i:i + 2] for i in range(4, len(body), 2)]


class DcganTrunk(nn.Module):
    """The DCGAN discriminator's convolutions: RGB -> flattened 4x4 features."""

    def __init__(self, resolution: int, channels: int = 64, channels_max: int = 512):
        super().__init__()
        ch = channel_widths(resolution, channels, channels_max)
        layers: list[nn.Module] = [nn.Conv2d(3, ch(resolution), 3, 1, 1), nn.LeakyReLU(0.2)]
        r = resolution
        while r > 4:
            layers += [nn.Conv2d(ch(r), ch(r // 2), 4, 2, 1), nn.LeakyReLU(0.2)]
            r //= 2
        self.body = nn.Sequential(*layers)
        self.features = ch(4) * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


class DcganDiscriminator(nn.Module):
    """DCGAN discriminator: (logits [N], None); it has no auxiliary head."""

    def __init__(self, resolution: int, channels: int = 64, channels_max: int = 512):
        super().__init__()
        self.c_dim = 0
        trunk = DcganTrunk(resolution, channels, channels_max)
        self.body = trunk.body  # the state_dict keys of the first ganray checkpoints: body.*, head.*
        self.head = nn.Linear(trunk.features, 1)

    def input_blocks(self) -> list[nn.Module]:
        """D's blocks from the input side (what train.freeze_d counts); the head is none of them."""
        return trunk_blocks(self.body)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return self.head(self.body(x).flatten(1)).squeeze(1), None
