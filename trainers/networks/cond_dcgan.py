"""Conditional DCGAN after MakeGirlsMoe (Jin et al. 2017), with tags or text (StackGAN Stage-I).

G, tags: the multi-hot tag vector c is embedded (linear) and joined to z; the rest is DCGAN.
G, text: c is a sentence embedding; StackGAN's conditioning augmentation maps it to
(mu, log sigma^2) and a sample (mu when sampling) is joined to z.
D: DCGAN convolutions to features h; the logit is ``head(h) + <project(c), h>`` (a projection
discriminator, Miyato & Koyama 2018, where a multi-hot c projects the sum of its tags'
embeddings), and an auxiliary head reads c back from the image: the tags (multi-label
logits, ACGAN-style) or the text embedding (its direction); ``aux_kind`` names which.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trainers.networks.common import ConditioningAugmentation
from trainers.networks.dcgan import DcganGenerator, DcganTrunk, trunk_blocks


class CondDcganGenerator(nn.Module):
    """G(z, c): DCGAN fed with [z, embed(c)] (tags) or [z, CA(c)] (text)."""

    def __init__(self, z_dim: int, c_dim: int, resolution: int, channels: int = 64, channels_max: int = 512,
                 embed_dim: int = 32, conditioning: str = "tags"):
        super().__init__()
        if c_dim < 1:
            raise ValueError("cond-dcgan needs at least one tag (the dataset's tag vocabulary is empty)")
        self.config = {"arch": "cond-dcgan", "z_dim": z_dim, "c_dim": c_dim, "resolution": resolution,
                       "channels": channels, "channels_max": channels_max, "embed_dim": embed_dim,
                       "conditioning": conditioning}
        self.z_dim, self.c_dim, self.resolution = z_dim, c_dim, resolution
        if conditioning == "text":
            self.ca: ConditioningAugmentation | None = ConditioningAugmentation(c_dim, embed_dim)
        else:
            self.ca = None
            self.embed = nn.Linear(c_dim, embed_dim)
        self.net = DcganGenerator(z_dim, resolution, channels, channels_max, in_dim=z_dim + embed_dim)

    def condition(self, c: torch.Tensor) -> torch.Tensor:
        """What is joined to z: embed(c) for tags, the augmentation's mu for text."""
        return self.ca(c)[0] if self.ca is not None else self.embed(c)

    def generate(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Images for latents z and an already embedded (or augmented) condition e (N, embed_dim)."""
        return self.net(torch.cat([z, e.to(z.dtype)], dim=1))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] for latents z (N, z_dim) and conditions c (N, c_dim)."""
        if c is None:
            raise ValueError("cond-dcgan generator needs a tag vector (or a text embedding) c")
        return self.generate(z, self.condition(c.to(z.dtype)))


class CondDcganDiscriminator(nn.Module):
    """D(x, c) -> (logits [N], auxiliary logits [N, c_dim])."""

    def __init__(self, c_dim: int, resolution: int, channels: int = 64, channels_max: int = 512,
                 aux_kind: str = "tags"):
        super().__init__()
        self.c_dim, self.aux_kind = c_dim, aux_kind
        # a unit-norm text embedding projects at unit variance per component (see ConditioningAugmentation)
        self.c_scale = math.sqrt(c_dim) if aux_kind == "text" else 1.0
        self.trunk = DcganTrunk(resolution, channels, channels_max)
        self.head = nn.Linear(self.trunk.features, 1)
        self.project = nn.Linear(c_dim, self.trunk.features, bias=False)
        self.aux = nn.Linear(self.trunk.features, c_dim)

    def input_blocks(self) -> list[nn.Module]:
        """D's blocks from the input side (what train.freeze_d counts): the trunk's; no head is one of them."""
        return trunk_blocks(self.trunk.body)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if c is None:
            raise ValueError("cond-dcgan discriminator needs a tag vector (or a text embedding) c")
        h = self.trunk(x)
        logits = self.head(h).squeeze(1) + (self.project(c.to(h.dtype) * self.c_scale) * h).sum(1)
        return logits, self.aux(h)
