"""Small networks shaped as the one loader gives them, for the projector's in-process tests.

``loaded(...)`` builds a generator with ``trainers.networks.build_models`` and wraps it as
``deploy.loader.LoadedModel`` presents a version: ``generator`` the packed ``[z | c (| psi)]``
module, and for a StyleGAN2 with exports the parts ``trainers.exports`` exports, unexported:
``mapping`` (packed input -> ws), ``synthesis`` (``synthesis(ws, *noise)``) and ``noise`` (the
maps that make ``synthesis(mapping(x), *noise)`` the generator's own image); ``meta.exports``
holds their shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from trainers.exports import MappingPart, SynthesisPart, fixed_noise
from trainers.generator_metadata import GeneratorMetadata, style_shapes
from trainers.networks import PackedInputGenerator, build_models
from trainers.model_ref import ModelRef
from trainers.spec import ModelSpec


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
    meta = replace(meta, exports=style_shapes(g.config))
    return Loaded("tiny", 1, packed, meta, MappingPart(g).eval(), SynthesisPart(g).eval(), tuple(fixed_noise(g)))
