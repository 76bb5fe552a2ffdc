"""Samples of a registered generator: latents from seeds, the condition vector of a request, images.

Used by ``ganray generate`` and the server in ``deploy/``: the same seed and request give
the same images everywhere. The generator is the registered, packed form (one input,
``[z | c]``; see ``trainers.generator_metadata``).
"""
from __future__ import annotations

import numpy as np
import torch

from trainers.conditioning import TagEncoder, UnknownTagError, normalise_tags
from trainers.errors import GanrayError
from trainers.generator_metadata import GeneratorMetadata
from trainers.grid import to_uint8

MAX_SAMPLES = 1024


class SamplingError(GanrayError, ValueError):
    """A request a generator cannot answer; the message says which part is wrong."""


def latents(z_dim: int, n: int, seed: int) -> torch.Tensor:
    """(n, z_dim) noise; row i comes from seed + i alone, so any slice of seeds is reproducible."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def check_count(n: int, limit: int = MAX_SAMPLES) -> None:
    """SamplingError unless 1 <= n <= limit."""
    if not 1 <= n <= limit:
        raise SamplingError(f"n must be between 1 and {limit}, got {n}")


def condition_vector(meta: GeneratorMetadata, tags: list[str] | None, where: str = "the model"
                     ) -> torch.Tensor | None:
    """The multi-hot c of a request, in the order of the model's vocabulary (None: unconditional).

    Tags for an unconditional model, no tags for a conditional one, or an unknown tag
    (the error lists the known ones) are SamplingErrors.
    """
    if not meta.c_dim:
        if tags:
            raise SamplingError(f"{where} is unconditional (arch {meta.arch}); tags need a tag-conditioned model")
        return None
    if not tags:
        raise SamplingError(f"{where} is tag-conditioned: give tags (known tags: {', '.join(meta.vocabulary)})")
    try:
        return TagEncoder(meta.vocabulary).encode_request(normalise_tags(tags))
    except UnknownTagError as err:
        raise SamplingError(f"{where}: {err}") from None


@torch.no_grad()
def sample(generator, z_dim: int, n: int, seed: int, c: torch.Tensor | None = None, batch: int = 64
           ) -> np.ndarray:
    """n images (uint8 NxHxWx3) of a packed generator; image i comes from seed + i (and c, the same for all)."""
    check_count(n, limit=1 << 20)
    z = latents(z_dim, n, seed)
    if c is not None:
        z = torch.cat([z, c.float().unsqueeze(0).expand(n, -1)], dim=1)  # the registered input is [z | c]
    out = []
    for i in range(0, n, batch):
        chunk = z[i:i + batch]
        # An exported generator keeps a dynamic batch of size >= 2: pad a single sample.
        padded = torch.cat([chunk, chunk]) if len(chunk) == 1 else chunk
        out.append(to_uint8(generator(padded))[: len(chunk)])
    return np.concatenate(out)
