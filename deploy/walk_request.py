"""What a client may ask of ``POST /walk[?format=webp|gif]``, checked before anything runs.

A walk is ``ganray generate --walk``'s (``trainers.walks.walk_frames``): a loop through the key seeds and
back to the first, ``frames`` frames in all, in z (DCGAN, or a StyleGAN2 without W exports) or in W.
The body: ``seeds`` (2 to ``MAX_WALK_SEEDS`` key seeds), ``frames`` (the number of keys to
``MAX_WALK_FRAMES``, 24 when left out; one key seed is a walk too while the condition moves), ``fps`` (``WALK_FPS``, 12), ``truncation``, and the condition:
``tags`` (or a ``prompt``), fixed, or moving over the walk to ``tags_to`` (``prompt_to``).

The condition of a tag model is one tag set for the whole walk: the request's tags with the tags it
leaves open drawn once from the training data (for the first key seed, as ``/generate`` draws its
first sample's). ``tags_to`` moves it to that set with the ``tags`` taken out, the tags grouped with a
``tags_to`` tag (the other hair colours) taken out, and ``tags_to`` put in: the same face, other hair.

Every bad body is a :class:`deploy.request.BadRequest` naming the problem, as ``/generate``'s is, also
tags the training data never has together (either end), and frames whose pixels (frames x
resolution^2) are over the endpoint's ``max_request_pixels``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from deploy.limits import MAX_WALK_FRAMES, MAX_WALK_SEEDS, WALK_FPS
from deploy.loader import LoadedModel
from deploy.request import (BadRequest, check_pixels, integer_field, parse_object, prompt_condition, prompt_field,
                            sampling_checked, tags_field, tags_seen_together, truncation_field)
from trainers.conditioning import TagEncoder
from trainers.data.tags import normalise_tags
from trainers.sampling import check_seed, check_truncation, condition_rows, condition_vector

WALK_FIELDS = ("seeds", "frames", "fps", "tags", "tags_to", "prompt", "prompt_to", "truncation")
WALK_FORMATS = ("webp", "gif")


@dataclass(frozen=True)
class WalkRequest:
    seeds: tuple[int, ...]
    frames: int = 24
    fps: int = 12
    tags: tuple[str, ...] | None = None
    tags_to: tuple[str, ...] | None = None
    prompt: str | None = None
    prompt_to: str | None = None
    truncation: float = 1.0


@dataclass(frozen=True)
class PreparedWalk:
    """A checked walk against the model it is drawn with: walk_frames' arguments."""

    model: LoadedModel
    seeds: list[int]
    frames: int
    fps: int
    c_from: torch.Tensor | None
    c_to: torch.Tensor | None
    truncation: float


def parse_walk_format(value: str | None) -> str:
    fmt = (value or "webp").lower()
    if fmt not in WALK_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(WALK_FORMATS)} for a walk, got {value!r}")
    return fmt


def parse_walk(body: bytes) -> WalkRequest:
    """The JSON body of POST /walk -> WalkRequest (types and ranges checked, not yet the model)."""
    raw = parse_object(body, WALK_FIELDS)
    tags, tags_to = tags_field(raw.get("tags")), tags_field(raw.get("tags_to"))
    prompt, prompt_to = prompt_field(raw, "prompt"), prompt_field(raw, "prompt_to")
    seeds = _seeds(raw.get("seeds"), moving=bool(tags_to or prompt_to))
    frames = integer_field(raw, "frames", 24)
    if not max(2, len(seeds)) <= frames <= MAX_WALK_FRAMES:
        raise BadRequest(f"frames must be between {max(2, len(seeds))} (one per key seed at least) and "
                         f"{MAX_WALK_FRAMES}, got {frames}")
    fps = integer_field(raw, "fps", 12)
    if not WALK_FPS[0] <= fps <= WALK_FPS[1]:
        raise BadRequest(f"fps must be between {WALK_FPS[0]} and {WALK_FPS[1]}, got {fps}")
    if (tags or tags_to) and (prompt or prompt_to):
        raise BadRequest("give tags (and tags_to) or a prompt (and prompt_to), not both")
    if prompt_to and not prompt:
        raise BadRequest("prompt_to moves the walk from a prompt: give prompt too")
    return WalkRequest(seeds, frames, fps, tags, tags_to, prompt, prompt_to, truncation_field(raw))


def prepare_walk(model: LoadedModel, req: WalkRequest, max_pixels: int) -> PreparedWalk:
    """The walk's arguments for model; BadRequest when the model cannot draw it or its frames are over
    max_pixels. A prompt is encoded here: call it off the event loop."""
    check_pixels(req.frames, model.meta.resolution, max_pixels, "frames", "frames")
    c_from, c_to = walk_conditions(model, req)
    psi = sampling_checked(check_truncation, model.meta, req.truncation, f"model {model.name}")
    return PreparedWalk(model, list(req.seeds), req.frames, req.fps, c_from, c_to, psi)


def walk_conditions(model: LoadedModel, req: WalkRequest) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(c_from, c_to) of a walk: a prompt's embeddings, a tag model's two tag sets (see the module's
    docstring), or (None, None) for an unconditional model; c_to None: the condition stays."""
    where, meta = f"model {model.name}", model.meta
    if req.prompt is not None:
        return prompt_condition(model, req.prompt), (prompt_condition(model, req.prompt_to)
                                                     if req.prompt_to else None)
    tags = list(req.tags) if req.tags else None
    c = sampling_checked(condition_rows, meta, tags, 1, req.seeds[0], where)
    tags_seen_together(model, req.tags)
    if req.tags_to is None:
        return (c.reshape(-1) if c is not None else None), None
    sampling_checked(condition_vector, meta, list(req.tags_to), where)  # unknown tags, or no tags to take
    tags_seen_together(model, req.tags_to)
    return c.reshape(-1), _moved(model, c.reshape(-1), tags or [], list(req.tags_to))


def _moved(model: LoadedModel, c_from: torch.Tensor, tags: list[str], tags_to: list[str]) -> torch.Tensor:
    """c_from's tag set without tags and without the group-mates of tags_to, with tags_to."""
    vocabulary = list(model.meta.vocabulary)
    to = normalise_tags(tags_to)
    mates = {t for g in model.meta.tag_table.groups if set(g.tags) & set(to) for t in g.tags}
    gone = set(normalise_tags(tags)) | mates
    kept = [t for t, on in zip(vocabulary, c_from.tolist()) if on and t not in gone]
    return TagEncoder(vocabulary).encode([kept + to])[0]


def _seeds(value: Any, moving: bool) -> tuple[int, ...]:
    """The key seeds: 2 or more, or one when the condition moves (the same face, other tags)."""
    least = 1 if moving else 2
    if not isinstance(value, list) or not least <= len(value) <= MAX_WALK_SEEDS:
        raise BadRequest(f"seeds must be a list of {least} to {MAX_WALK_SEEDS} key seeds (integers)"
                         f"{'' if moving else ' (one seed walks only while tags_to or prompt_to moves it)'}, "
                         f"got {value!r}"[:300])
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BadRequest(f"seeds must be integers, got {seed!r}"[:300])
        sampling_checked(check_seed, seed, 1)
    return tuple(value)
