"""Networks: generators and discriminators. They know neither losses nor the loop.

Every generator is ``G(z, c=None) -> images`` with attributes ``z_dim``, ``c_dim``,
``resolution`` and ``config`` (what :func:`build_generator` needs to rebuild it); every
discriminator is ``D(x, c=None) -> (logits [N], aux logits [N, c_dim] or None)``. c is a
tag vector or a text embedding (``config["conditioning"]``; a config without it is tags).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainers.networks.common import dcgan_init
from trainers.networks.cond_dcgan import CondDcganDiscriminator, CondDcganGenerator
from trainers.networks.dcgan import DcganDiscriminator, DcganGenerator
from trainers.networks.stylegan2 import StyleGan2Discriminator, StyleGan2Generator
from trainers.spec import ARCHES, ModelSpec, check_resolution

__all__ = ["ARCHES", "build_generator", "build_models", "check_resolution", "generate_images",
           "PackedInputGenerator", "packed_ws", "DcganGenerator", "DcganDiscriminator", "CondDcganGenerator",
           "CondDcganDiscriminator", "StyleGan2Generator", "StyleGan2Discriminator"]


def build_generator(config: dict[str, Any]) -> nn.Module:
    """A generator from its config (what ``generator.config`` holds), freshly initialised.

    A config carries every key its architecture's generator writes; a missing one is a KeyError.
    """
    check_resolution(config["resolution"])
    arch = config["arch"]
    if arch == "dcgan":
        return DcganGenerator(config["z_dim"], config["resolution"], config["channels"], config["channels_max"])
    text = config.get("conditioning") == "text"  # configs written before text conditioning hold no such key
    if arch == "cond-dcgan":
        return CondDcganGenerator(config["z_dim"], config["c_dim"], config["resolution"], config["channels"],
                                  config["channels_max"], config["embed_dim"], "text" if text else "tags")
    if arch == "stylegan2":
        return StyleGan2Generator(config["z_dim"], config["c_dim"], config["resolution"], config["channels"],
                                  config["channels_max"], config["w_dim"], config["mapping_layers"],
                                  config["embed_dim"] if text else 0)
    raise ValueError(f"unknown generator arch {arch!r}; known: {', '.join(ARCHES)}")


def build_models(model: ModelSpec, resolution: int, c_dim: int = 0) -> tuple[nn.Module, nn.Module]:
    """(G, D) for the spec's model section at resolution; c_dim is the conditioning size (0: none).

    Raises ValueError for a resolution outside the rule or a conditional model without a condition.
    DCGAN-family networks get DCGAN's N(0, 0.02) init; StyleGAN2 keeps its equalised-lr init.
    """
    check_resolution(resolution)
    if model.conditional and c_dim < 1:
        raise ValueError(f"model.conditioning={model.conditioning} but the dataset has no tags (or captions) to "
                         "condition on")
    c_dim = c_dim if model.conditional else 0
    config = {"arch": model.arch, "z_dim": model.z_dim, "c_dim": c_dim, "resolution": resolution,
              "channels": model.channels, "channels_max": model.channels_max, "embed_dim": model.embed_dim,
              "w_dim": model.w_dim, "mapping_layers": model.mapping_layers, "conditioning": model.conditioning}
    g = build_generator(config)
    if model.arch == "dcgan":
        d: nn.Module = DcganDiscriminator(resolution, model.channels, model.channels_max)
    elif model.arch == "cond-dcgan":
        d = CondDcganDiscriminator(c_dim, resolution, model.channels, model.channels_max, model.conditioning)
    else:
        d = StyleGan2Discriminator(c_dim, resolution, model.channels, model.channels_max, model.mbstd_group,
                                   model.mapping_layers)
    if model.arch in ("dcgan", "cond-dcgan"):
        dcgan_init(g, d)
    return g, d


@torch.no_grad()
def generate_images(g: nn.Module, z: torch.Tensor, c: torch.Tensor | None = None, batch: int = 64) -> torch.Tensor:
    """Reproducible samples of g in eval mode (StyleGAN2's noise inputs fixed); g's mode is restored."""
    was = g.training
    g.eval()
    try:
        out = []
        for i in range(0, z.shape[0], batch):
            zi, ci = z[i:i + batch], (c[i:i + batch] if c is not None else None)
            out.append(g(zi, ci, noise_mode="const") if isinstance(g, StyleGan2Generator) else g(zi, ci))
        return torch.cat(out)
    finally:
        g.train(was)


class PackedInputGenerator(nn.Module):
    """A generator with one input: what the registry exports and serves.

    The input is [z | c] (N, z_dim + c_dim) for every architecture; a StyleGAN2 export takes one
    more column, [z | c | psi] (``input_width``): psi, per row, is StyleGAN2's truncation toward
    w_avg (1: none). The column is optional when tracing: the example's width decides, and an
    export without it samples at psi 1. One tensor input keeps the exported program's signature
    the same for every architecture; StyleGAN2's noise inputs are fixed so that a seed always
    gives the same image.
    """

    def __init__(self, g: nn.Module):
        super().__init__()
        self.g, self.z_dim, self.c_dim = g, g.z_dim, getattr(g, "c_dim", 0)
        self.style = isinstance(g, StyleGan2Generator)
        self.input_width = self.z_dim + self.c_dim + (1 if self.style else 0)

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        if not self.style:
            z = zc[:, :self.z_dim]
            return self.g(z, zc[:, self.z_dim:self.z_dim + self.c_dim] if self.c_dim else None)
        return self.g.synthesis(self.ws(zc), noise_mode="const")

    def ws(self, zc: torch.Tensor) -> torch.Tensor:
        """A StyleGAN2's ws for packed rows (:func:`packed_ws`)."""
        return packed_ws(self.g.mapping, getattr(self.g, "ca", None), self.z_dim, self.c_dim, zc)


def packed_ws(mapping: nn.Module, ca: nn.Module | None, z_dim: int, c_dim: int, zc: torch.Tensor) -> torch.Tensor:
    """A StyleGAN2's ws (N, num_ws, w_dim) for packed rows [z | c | psi]: a text embedding's conditioning
    augmentation (ca) at its mean, psi's truncation applied; what the registered generator draws and the
    exported mapping part returns (``trainers.exports``)."""
    z = zc[:, :z_dim]
    c = zc[:, z_dim:z_dim + c_dim] if c_dim else None
    if ca is not None and c is not None:
        c = ca(c)[0]  # a text embedding's conditioning augmentation, at its mean (as G's forward)
    ws = mapping(z, c)
    if zc.shape[1] > z_dim + c_dim:  # static when exported: the example's width decides
        psi = zc[:, z_dim + c_dim:z_dim + c_dim + 1].unsqueeze(-1)  # (N, 1, 1)
        ws = mapping.w_avg.lerp(ws, psi)  # w_avg + psi * (w - w_avg), as the mapping's truncation
    return ws
