"""Latent walks: the frames of a loop through key seeds, in z or in StyleGAN2's W, as StyleGAN's videos do.

A walk visits its key seeds in order and comes back to the first: ``frames`` frames spread evenly over
the segments (frame f lies at ``f * K / frames`` along the K segments, so frame 0 is the first key's
sample and the frame after the last would be it again). Between two keys:

- in z (DCGAN and conditional DCGAN, or a StyleGAN2 version registered without its parts): spherical
  interpolation (:func:`slerp`), whose points keep the norm a Gaussian z has;
- in W (a StyleGAN2 with its exported mapping and synthesis, ``trainers.exports``): the key seeds'
  ws (truncation applied, as the mapping part applies it) are interpolated linearly, as StyleGAN2's
  own interpolation videos do; the fixed noise maps stay as they are.

The condition vector moves linearly from ``c_from`` to ``c_to`` over the whole walk (frame 0 has c_from,
the last frame c_to; ``c_to`` None keeps it fixed; both None for an unconditional model), so the same
faces go from one request's tags (or prompt) to another's. Frames are drawn in batches; ``progress(done,
total)`` is called after each. The model is what ``deploy.loader`` returns (``LoadedModel``), read only
through ``.generator``, ``.meta``, ``.mapping``, ``.synthesis``, ``.noise`` and ``.device``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from trainers.grid import to_uint8
from trainers.sampling import SamplingError, check_seed, latents, run_packed

MAX_FRAMES = 600
MAX_KEYS = 64  # key seeds of one walk


def walk_space(model: Any) -> str:
    """"w" when the model has its StyleGAN2 parts (a walk then interpolates ws), else "z"."""
    return "w" if model.mapping is not None and model.synthesis is not None else "z"


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (..., D) at t (a number, or one per row (..., 1)):
    the direction moves along the great circle from a's to b's and the norm linearly between theirs, so
    vectors of one norm stay on that sphere. Parallel rows fall back to a straight line (the same path)."""
    t = torch.as_tensor(t, dtype=a.dtype)
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / norm_a.clamp_min(1e-12), b / norm_b.clamp_min(1e-12)
    omega = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0).acos()
    sin_omega = omega.sin()
    straight = sin_omega.abs() < 1e-6
    safe = torch.where(straight, torch.ones_like(sin_omega), sin_omega)
    direction = torch.where(straight, (1 - t) * ua + t * ub,
                            ((1 - t) * omega).sin() / safe * ua + (t * omega).sin() / safe * ub)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return direction * ((1 - t) * norm_a + t * norm_b)


def check_walk(seeds: list[int], frames: int, moving: bool = False) -> None:
    """SamplingError unless frames is 2..MAX_FRAMES and there are 2..MAX_KEYS seeds, each one torch takes;
    moving (the condition moves): one seed is a walk too (the same face, other tags)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= MAX_FRAMES:
        raise SamplingError(f"a walk has 2 to {MAX_FRAMES} frames, got {frames!r}")
    least = 1 if moving else 2
    if not least <= len(seeds) <= MAX_KEYS:
        raise SamplingError(f"a walk goes through {least} to {MAX_KEYS} key seeds"
                            f"{'' if moving else ' (one seed walks only while the tags or prompt move)'}, "
                            f"got {len(seeds)}")
    for seed in seeds:
        check_seed(seed)


def frame_positions(keys: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(segment, t) of each frame of a loop through `keys` keys: frame f at f * keys / frames, so frames are
    spread evenly and the loop closes (segment s runs from key s to key s + 1 mod keys)."""
    u = np.arange(frames, dtype=np.float64) * keys / frames
    segment = np.minimum(np.floor(u).astype(np.int64), keys - 1)
    return segment, u - segment


def walk_frames(model: Any, seeds: list[int], frames: int, c_from: torch.Tensor | None = None,
                c_to: torch.Tensor | None = None, truncation: float = 1.0, batch: int = 32,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The frames (frames, R, R, 3) uint8 of a loop through the key seeds back to the first (see the module
    docstring): slerp in z, or lerp of the key ws in W when the model has its StyleGAN2 parts; c moving
    linearly from c_from to c_to (c_to None: fixed); truncation psi for a StyleGAN2 that takes it (check it
    with ``sampling.check_truncation`` first). SamplingError for bounds (:func:`check_walk`)."""
    meta = model.meta
    check_walk(seeds, frames, moving=c_to is not None)
    if c_to is not None and c_from is None:
        raise SamplingError("a walk's condition can move only from a first request (tags or prompt) to a second")
    keys = torch.cat([latents(meta.z_dim, 1, seed) for seed in seeds])
    segment, t = frame_positions(len(seeds), frames)
    share = np.arange(frames, dtype=np.float64) / (frames - 1)  # how far c has moved at each frame
    out = []
    for start in range(0, frames, batch):
        part = slice(start, min(start + batch, frames))
        seg, tt = torch.from_numpy(segment[part]), torch.from_numpy(t[part]).float().unsqueeze(1)
        c = _conditions(c_from, c_to, torch.from_numpy(share[part]).float().unsqueeze(1))
        z_a, z_b = keys[seg], keys[(seg + 1) % len(seeds)]
        out.append(_draw(model, z_a, z_b, tt, c, truncation))
        if progress is not None:
            progress(part.stop, frames)
    return np.concatenate(out)


def _conditions(c_from: torch.Tensor | None, c_to: torch.Tensor | None, share: torch.Tensor) -> torch.Tensor | None:
    """Each frame's c (n, c_dim): c_from moved share (n, 1) of the way to c_to; None when unconditional."""
    if c_from is None:
        return None
    c_from = c_from.float().reshape(1, -1)
    if c_to is None:
        return c_from.expand(len(share), -1)
    return c_from + (c_to.float().reshape(1, -1) - c_from) * share


@torch.no_grad()
def _draw(model: Any, z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None,
          truncation: float) -> np.ndarray:
    """The images of frames between keys z_a and z_b at t (n, 1), each with its c row."""
    meta = model.meta

    def rows(z: torch.Tensor) -> torch.Tensor:
        parts = [z] + ([c] if c is not None else []) + ([torch.full((len(z), 1), float(truncation))]
                                                         if meta.takes_psi else [])
        return torch.cat(parts, dim=1).to(model.device)

    if walk_space(model) == "z":
        return run_packed(model.generator, rows(slerp(z_a, z_b, t)).cpu(), device=model.device)
    ws = torch.lerp(model.mapping(rows(z_a)), model.mapping(rows(z_b)), t.to(model.device).unsqueeze(-1))
    return to_uint8(model.synthesis(ws, *model.noise))
