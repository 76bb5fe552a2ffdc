"""Small networks shaped as the one loader gives them, for the projector's in-process tests.

``loaded(...)`` builds a generator with ``trainers.networks.build_models`` and wraps it as
``deploy.loader.LoadedModel`` presents a version: ``generator`` the packed ``[z | c (| psi)]``
module, and for a StyleGAN2 with exports ``mapping`` (packed input -> ws), ``synthesis``
(``synthesis(ws, *noise)``, the noise maps as inputs) and ``noise`` (the maps that make
``synthesis(mapping(x), *noise)`` the generator's own image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from trainers.generator_metadata import GeneratorMetadata
from trainers.networks import PackedInputGenerator, StyleGan2Generator, build_models
from trainers.model_ref import ModelRef
from trainers.spec import ModelSpec


class PackedMapping(nn.Module):
    """[z | c | psi] -> ws (N, num_ws, w_dim), truncation applied, as the main export's first half."""

    def __init__(self, g: StyleGan2Generator):
        super().__init__()
        self.g = g

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        z_dim, c_dim = self.g.z_dim, self.g.c_dim
        c = zc[:, z_dim:z_dim + c_dim] if c_dim else None
        if self.g.ca is not None and c is not None:
            c = self.g.ca(c)[0]
        ws = self.g.mapping(zc[:, :z_dim], c)
        psi = zc[:, z_dim + c_dim:z_dim + c_dim + 1].unsqueeze(-1)
        return self.g.mapping.w_avg.lerp(ws, psi)


class NoiseInputSynthesis(nn.Module):
    """synthesis(ws, *noise): the synthesis network with its constant noise maps given as inputs."""

    def __init__(self, g: StyleGan2Generator):
        super().__init__()
        self.synthesis = g.synthesis
        self.names = [name for name, _ in g.synthesis.named_buffers() if name.endswith("noise_const")]

    def forward(self, ws: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        return functional_call(self.synthesis, dict(zip(self.names, noise)), (ws,), {"noise_mode": "const"})

    def fixed_noise(self) -> tuple[torch.Tensor, ...]:
        buffers = dict(self.synthesis.named_buffers())
        return tuple(buffers[name].clone() for name in self.names)


@dataclass(frozen=True)
class Loaded:
    name: str
    version: int
    generator: Any
    meta: GeneratorMetadata
    mapping: Any = None
    synthesis: Any = None
    noise: tuple = ()

    @property
    def uri(self) -> str:
        return ModelRef(self.name, version=self.version).uri


@torch.no_grad()
def _calibrate_batch_norm(g: nn.Module, z_dim: int, c_dim: int) -> None:
    """A DCGAN's BatchNorm statistics from its own activations (untrained, they are N(0, 1)'s, and its eval-mode
    pictures all but constant) and a wider RGB layer: so that an untrained generator draws pictures that differ."""
    body = g.body if hasattr(g, "body") else g.net.body
    nn.init.normal_(body[-2].weight, 0.0, 0.3)
    g.train()
    for _ in range(30):
        g(torch.randn(256, z_dim), torch.randint(0, 2, (256, c_dim)).float() if c_dim else None)


def loaded(arch: str, vocabulary: list[str] | None = None, seed: int = 0, resolution: int = 16, channels: int = 8,
           exports: bool = True, z_dim: int = 16) -> Loaded:
    """A freshly initialised generator as a loaded version; exports=False: a StyleGAN2 registered before the
    W exports (mapping, synthesis and noise absent)."""
    vocabulary = list(vocabulary or [])
    torch.manual_seed(seed)
    spec = ModelSpec(arch=arch, z_dim=z_dim, channels=channels, channels_max=32, mapping_layers=2,
                     conditioning="tags" if vocabulary else "none")
    g, _ = build_models(spec, resolution, c_dim=len(vocabulary))
    if arch != "stylegan2":
        _calibrate_batch_norm(g, z_dim, len(vocabulary))
    g.eval().requires_grad_(False)
    meta = GeneratorMetadata(g.config, vocabulary, "tags" if vocabulary else "none", step=0)
    packed = PackedInputGenerator(g).eval()
    if arch != "stylegan2" or not exports:
        return Loaded("tiny", 1, packed, meta)
    g.mapping(torch.randn(256, z_dim), torch.zeros(256, len(vocabulary)) if vocabulary else None,
              update_w_avg=True)
    synthesis = NoiseInputSynthesis(g)
    return Loaded("tiny", 1, packed, meta, PackedMapping(g), synthesis, synthesis.fixed_noise())
