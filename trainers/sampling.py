"""Samples of a registered generator: latents from seeds, the condition vector of a request, images.

Used by ``ganray generate`` and the server in ``deploy/``: the same seed and request give
the same images everywhere. The generator is the registered, packed form (one input,
``[z | c]``, or ``[z | c | psi]`` for a StyleGAN2 that takes its truncation; see
``trainers.generator_metadata``). The server batches requests by concatenating their
:func:`packed_rows` and running :func:`run_packed` once.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from trainers.conditioning import TagEncoder, UnknownTagError
from trainers.data.tags import normalise_tags
from trainers.errors import GanrayError
from trainers.generator_metadata import GeneratorMetadata
from trainers.grid import to_uint8

MAX_SAMPLES = 1024
MAX_SEED = 2**63 - 1
TRUNCATION_RANGE = (-2.0, 2.0)  # StyleGAN2's psi: 1 is none, 0 the average w; beyond +-2 is noise


class SamplingError(GanrayError, ValueError):
    """A request a generator cannot answer; the message says which part is wrong."""


def latents(z_dim: int, n: int, seed: int) -> torch.Tensor:
    """(n, z_dim) noise; row i comes from seed + i alone, so any slice of seeds is reproducible."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def check_seed(seed: int, n: int = 1) -> None:
    """SamplingError unless every seed of seed .. seed + n - 1 is one torch takes (0 to 2**63 - 1)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed + max(n, 1) - 1 > MAX_SEED:
        raise SamplingError(f"seed must be an integer from 0 to {MAX_SEED - max(n, 1) + 1}, got {seed!r}")


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
    if meta.conditioning == "text":
        raise SamplingError(f"{where} is text-conditioned: give a prompt (--prompt), not tags")
    if not tags:
        raise SamplingError(f"{where} is tag-conditioned: give tags (known tags: {', '.join(meta.vocabulary)})")
    try:
        return TagEncoder(meta.vocabulary).encode_request(normalise_tags(tags))
    except UnknownTagError as err:
        raise SamplingError(f"{where}: {err}") from None


def fill_tags(meta: GeneratorMetadata, tags: list[str], n: int, seed: int) -> list[list[str]]:
    """n tag sets for a request of tags: sample i gets a tag set of the training data that holds every
    requested tag, drawn (weighted by how often it occurs) from seed + i alone, so tags the request
    leaves open vary from sample to sample as they do in the data (MakeGirlsMoe's "random" attributes).
    Without such a set (or a table: older versions), every sample gets exactly the requested tags."""
    wanted = set(normalise_tags(tags))
    matching = sorted((key, count) for key, count in meta.tag_sets.items() if wanted <= set(key.split(",")))
    if not matching:
        return [sorted(wanted)] * n
    weights = np.array([count for _, count in matching], dtype=np.float64)
    out = []
    for i in range(n):
        pick = np.random.default_rng([seed + i, 7919]).choice(len(matching), p=weights / weights.sum())
        out.append([t for t in matching[pick][0].split(",") if t])  # "": a sample without tags
    return out


def condition_rows(meta: GeneratorMetadata, tags: list[str] | None, n: int, seed: int, where: str = "the model",
                   fill: bool = True) -> torch.Tensor | None:
    """The c of each of n samples for a tag request (n x c_dim), with unspecified tags drawn per sample
    (:func:`fill_tags`) unless fill is False; None for an unconditional model. The errors are
    :func:`condition_vector`'s, except that a tag model with a tag-set table takes no tags at all when
    filling: every tag of each sample is then drawn from the data (the page's "any" everywhere)."""
    if fill and not tags and meta.tag_sets and meta.conditioning == "tags" and meta.c_dim:
        check_seed(seed, n)
        return TagEncoder(meta.vocabulary).encode(fill_tags(meta, [], n, seed))
    c = condition_vector(meta, tags, where)
    if c is None or not fill or not meta.tag_sets:
        return c
    check_seed(seed, n)
    return TagEncoder(meta.vocabulary).encode(fill_tags(meta, tags or [], n, seed))


def prompt_vector(meta: GeneratorMetadata, prompt: str, where: str = "the model") -> torch.Tensor:
    """The c of a text prompt: its sentence embedding by the model's own encoder (offline, from its package).

    A prompt to a model without text conditioning, an empty prompt or one over 300 characters
    (SamplingErrors), or an encoder this installation does not have, are errors; the server
    calls this one function for a request's ``prompt``.
    """
    from trainers.conditioning.encoder import TextEncoderError
    from trainers.conditioning.phrases import PoolingError
    from trainers.conditioning.text import PromptError, encode_prompts

    if meta.conditioning != "text":
        kind = "tag-conditioned: give tags" if meta.c_dim else f"unconditional (arch {meta.arch})"
        raise SamplingError(f"{where} has no text conditioning ({kind}); a prompt needs a text-conditioned model")
    try:
        c = encode_prompts(meta.text_encoder, meta.text_pooling, [prompt])[0]
    except (PromptError, TextEncoderError, PoolingError) as err:
        raise SamplingError(f"{where}: {err}") from None
    if c.shape[0] != meta.c_dim:
        raise SamplingError(f"{where} takes a {meta.c_dim}-d text embedding; {meta.text_encoder} gives "
                            f"{c.shape[0]}")
    return c


def check_truncation(meta: GeneratorMetadata, truncation: float, where: str = "the model") -> float:
    """truncation as a float; SamplingError unless it is 1, or a finite psi in range for a StyleGAN2
    version whose input takes it (other architectures, and StyleGAN2 versions registered without
    the psi column, sample at 1 only)."""
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not math.isfinite(truncation):
        raise SamplingError(f"truncation must be a finite number, got {truncation!r}")
    psi = float(truncation)
    if psi == 1.0:
        return psi
    if meta.arch != "stylegan2":
        raise SamplingError(f"{where} is {meta.arch}: truncation is StyleGAN2's psi and must be 1 here, got {psi:g}")
    if not meta.takes_psi:
        raise SamplingError(f"{where} was registered without a truncation input (input {meta.input}): "
                            f"truncation must be 1, got {psi:g}")
    low, high = TRUNCATION_RANGE
    if not low <= psi <= high:
        raise SamplingError(f"truncation must be between {low:g} and {high:g}, got {psi:g}")
    return psi


def packed_rows(z_dim: int, n: int, seed: int, c: torch.Tensor | None = None, truncation: float = 1.0,
                takes_psi: bool = False) -> torch.Tensor:
    """The generator's input for one request: n rows [z | c | psi]; row i's z comes from seed + i,
    c is one vector for all rows or one per row (n x c_dim), left out when None; psi only when the
    generator takes it."""
    if truncation != 1.0 and not takes_psi:
        raise SamplingError(f"this generator takes no truncation: it must be 1, got {truncation:g}")
    check_seed(seed, n)
    parts = [latents(z_dim, n, seed)]
    if c is not None:
        parts.append(c.float().unsqueeze(0).expand(n, -1) if c.dim() == 1 else c.float())
    if takes_psi:
        parts.append(torch.full((n, 1), float(truncation)))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


@torch.no_grad()
def run_packed(generator, rows: torch.Tensor, batch: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """Images (uint8 NxHxWx3) of a packed generator for its input rows, in passes of at most batch rows."""
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        # An exported generator keeps a dynamic batch of size >= 2: pad a single sample.
        padded = torch.cat([chunk, chunk]) if len(chunk) == 1 else chunk
        out.append(to_uint8(generator(padded.to(device)))[: len(chunk)])
    return np.concatenate(out)


def sample(generator, z_dim: int, n: int, seed: int, c: torch.Tensor | None = None, batch: int = 64,
           truncation: float = 1.0, takes_psi: bool = False) -> np.ndarray:
    """n images (uint8 NxHxWx3) of a packed generator; image i comes from seed + i (and c, the same for all).

    takes_psi: the generator's input ends with a psi column (``GeneratorMetadata.takes_psi``); only
    then may truncation differ from 1 (check it first with :func:`check_truncation`).
    """
    check_count(n, limit=1 << 20)
    return run_packed(generator, packed_rows(z_dim, n, seed, c, truncation, takes_psi), batch)
