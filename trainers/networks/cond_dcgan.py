"""Tag-conditional DCGAN after MakeGirlsMoe (Jin et al. 2017).

G: the multi-hot tag vector c is embedded (linear) and joined to z; the rest is DCGAN.
D: DCGAN convolutions to features h; the logit is ``head(h) + <embed(c), h>`` (a projection
discriminator, Miyato & Koyama 2018, where a multi-hot c projects the sum of its tags'
embeddings), and an auxiliary head predicts the tags (multi-label logits, ACGAN-style).
"""
from __future__ import annotations

import torch
from torch import nn

from trainers.networks.dcgan import DcganGenerator, DcganTrunk


class CondDcganGenerator(nn.Module):
    """G(z, c): DCGAN fed with [z, embed(c)]."""

    def __init__(self, z_dim: int, c_dim: int, resolution: int, channels: int = 64, channels_max: int = 512,
                 embed_dim: int = 32):
        super().__init__()
        if c_dim < 1:
            raise ValueError("cond-dcgan needs at least one tag (the dataset's tag vocabulary is empty)")
        self.config = {"arch": "cond-dcgan", "z_dim": z_dim, "c_dim": c_dim, "resolution": resolution,
                       "channels": channels, "channels_max": channels_max, "embed_dim": embed_dim}
        self.z_dim, self.c_dim, self.resolution = z_dim, c_dim, resolution
        self.embed = nn.Linear(c_dim, embed_dim)
        self.net = DcganGenerator(z_dim, resolution, channels, channels_max, in_dim=z_dim + embed_dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] for latents z (N, z_dim) and multi-hot tags c (N, c_dim)."""
        if c is None:
            raise ValueError("cond-dcgan generator needs a tag vector c")
        return self.net(torch.cat([z, self.embed(c.to(z.dtype))], dim=1))


class CondDcganDiscriminator(nn.Module):
    """D(x, c) -> (logits [N], auxiliary tag logits [N, c_dim])."""

    def __init__(self, c_dim: int, resolution: int, channels: int = 64, channels_max: int = 512):
        super().__init__()
        self.c_dim = c_dim
        self.trunk = DcganTrunk(resolution, channels, channels_max)
        self.head = nn.Linear(self.trunk.features, 1)
        self.project = nn.Linear(c_dim, self.trunk.features, bias=False)
        self.aux = nn.Linear(self.trunk.features, c_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if c is None:
            raise ValueError("cond-dcgan discriminator needs a tag vector c")
        h = self.trunk(x)
        logits = self.head(h).squeeze(1) + (self.project(c.to(h.dtype)) * h).sum(1)
        return logits, self.aux(h)
