"""A StyleGAN2 version's parts, exported beside its one generator: what walks in W and projections need.

The registered generator is one function, ``[z | c | psi] -> image``, its noise fixed. A StyleGAN2
version also carries, inside its model folder:

- ``mapping.pt2``: ``mapping(zc) -> ws`` (N, num_ws, w_dim) for the same packed rows as the generator
  (a text embedding's conditioning augmentation at its mean, psi's truncation applied);
- ``synthesis.pt2``: ``synthesis(ws, *noise) -> images`` (N, 3, R, R) in [-1, 1], one (r, r) map per
  synthesis layer, differentiable in ws and the maps;
- ``noise.npz``: the fixed maps (``noise_0`` .. ``noise_{k-1}``, float32, no pickle), so that
  ``synthesis(mapping(zc), *noise)`` is the generator's image of the row.

Both archives are ``torch.export`` programs in the same ``pt2`` form as the generator. The registry
logs the files (``orchestrator.registry.versions``) and records :func:`export_parts`' description as
the metadata's ``exports`` (``trainers.generator_metadata``); the loader reads them back through
``trainers.safe_model.load_exports``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainers.generator_metadata import style_shapes
from trainers.networks import StyleGan2Generator, packed_ws

EXPORT_FOLDER = "extra_files"  # where MLflow's ``extra_files`` puts a model's extra files, inside its folder
FILES = {"mapping": "mapping.pt2", "synthesis": "synthesis.pt2", "noise": "noise.npz"}
MAX_BATCH = 4096  # the exported programs' dynamic batch bound


class MappingPart(nn.Module):
    """``[z | c | psi]`` rows -> ws, exactly as the registered generator computes them."""

    def __init__(self, g: StyleGan2Generator):
        super().__init__()
        self.mapping, self.ca, self.z_dim, self.c_dim = g.mapping, g.ca, g.z_dim, g.c_dim

    def forward(self, zc: torch.Tensor) -> torch.Tensor:
        return packed_ws(self.mapping, self.ca, self.z_dim, self.c_dim, zc)


class SynthesisPart(nn.Module):
    """``(ws, *noise)`` -> images: the synthesis network with its noise maps as inputs."""

    def __init__(self, g: StyleGan2Generator):
        super().__init__()
        self.synthesis = g.synthesis

    def forward(self, ws: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        return self.synthesis(ws, noise=list(noise))


def fixed_noise(g: StyleGan2Generator) -> list[torch.Tensor]:
    """The generator's fixed noise maps (``noise_const``), in the synthesis part's input order."""
    return [layer.noise_const.detach().clone().float() for layer in g.synthesis.noise_layers()]


@torch.no_grad()
def export_parts(g: StyleGan2Generator, input_width: int, folder: str | Path) -> tuple[list[Path], dict[str, Any]]:
    """Writes the mapping, the synthesis and the noise of a StyleGAN2 g (eval mode) into folder; returns
    (the three files, the metadata's ``exports``: each part's path inside the model folder, ``num_ws``,
    ``w_dim`` and ``noise_shapes``). input_width: the registered generator's packed input width."""
    noise, shapes = fixed_noise(g), style_shapes(g.config)
    if shapes["noise_shapes"] != [list(n.shape) for n in noise] or shapes["num_ws"] != g.num_ws:
        raise AssertionError(f"style_shapes disagrees with the network: {shapes} vs {[list(n.shape) for n in noise]}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    mapping = torch.export.export(MappingPart(g).eval(), (torch.zeros(2, input_width),),
                                  dynamic_shapes=({0: batch},))
    ws = torch.zeros(2, g.num_ws, g.w_dim)
    synthesis = torch.export.export(SynthesisPart(g).eval(), (ws, *noise),
                                    dynamic_shapes=({0: batch}, (None,) * len(noise)))
    paths = {part: folder / name for part, name in FILES.items()}
    torch.export.save(mapping, paths["mapping"])
    torch.export.save(synthesis, paths["synthesis"])
    np.savez(paths["noise"], **{f"noise_{i}": n.numpy() for i, n in enumerate(noise)})
    return list(paths.values()), {**{part: f"{EXPORT_FOLDER}/{name}" for part, name in FILES.items()}, **shapes}
