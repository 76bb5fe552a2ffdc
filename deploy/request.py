"""What a client may ask of ``POST /generate``, checked before anything runs.

Every way a body can be wrong is a :class:`BadRequest` whose message the client gets back
(400, ``{"error": reason}``): a body over 64 KB, malformed JSON, text with a lone surrogate
(``"\\ud800"``: valid JSON, but no Unicode text), an unknown field, a bad type, n out of range,
an unknown tag (listed against the known ones), tags the training data never has together (named,
``deploy.tags``), tags to an unconditional model, a prompt to a
model without text conditioning, a truncation the model cannot take, more pixels than the
endpoint's budget (n x height x width over ``max_request_pixels``). A checked request becomes
the generator's input rows (:func:`prepare`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from deploy.loader import LoadedModel
from deploy.tags import NeverTogether, check_together
from trainers.sampling import (SamplingError, check_count, check_seed, check_truncation, condition_rows, packed_rows,
                               prompt_vector)

MAX_BODY_BYTES = 64 * 1024
MAX_N = 64
MAX_PROMPT_CHARS = 300  # trainers.conditioning.text's bound, checked here before any encoding
FIELDS = ("seed", "n", "tags", "prompt", "truncation")
FORMATS = ("png", "npz")


class BadRequest(ValueError):
    """A request the server refuses; the message is the client's answer."""


@dataclass(frozen=True)
class GenerateRequest:
    seed: int = 0
    n: int = 16
    tags: tuple[str, ...] | None = None
    prompt: str | None = None
    truncation: float = 1.0


@dataclass(frozen=True)
class Prepared:
    """A checked request against the model it will be answered with: its input rows [z | c | psi]."""

    model: LoadedModel
    rows: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.rows)


def parse_format(value: str | None) -> str:
    fmt = (value or "png").lower()
    if fmt not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}, got {value!r}")
    return fmt


def check_body_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES // 1024} KB")


def parse_object(body: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object of a request body: its size, its JSON, its text and its field names checked."""
    check_body_size(len(body))
    try:
        raw = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"malformed JSON: {_short(err)}") from None
    if not isinstance(raw, dict):
        raise BadRequest(f"the body must be a JSON object with fields {', '.join(fields)}")
    _no_lone_surrogate(raw)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(fields)}")
    return raw


def parse_body(body: bytes) -> GenerateRequest:
    """The JSON body of POST /generate -> GenerateRequest (types and ranges checked, not yet the model)."""
    raw = parse_object(body, FIELDS)
    n = integer_field(raw, "n", 16)
    sampling_checked(check_count, n, MAX_N)
    seed = integer_field(raw, "seed", 0)
    sampling_checked(check_seed, seed, n)
    tags, prompt = tags_field(raw.get("tags")), prompt_field(raw, "prompt")
    if tags and prompt:
        raise BadRequest("give tags or a prompt, not both")
    return GenerateRequest(seed, n, tags, prompt, truncation_field(raw))


def prompt_field(raw: dict[str, Any], key: str) -> str | None:
    prompt = raw.get(key)
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise BadRequest(f"{key} must be a string of at most {MAX_PROMPT_CHARS} characters")
    return prompt


def truncation_field(raw: dict[str, Any]) -> float:
    truncation = raw.get("truncation", 1.0)
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not math.isfinite(truncation):
        raise BadRequest(f"truncation must be a finite number, got {truncation!r}")
    return float(truncation)


def prepare(model: LoadedModel, req: GenerateRequest, max_pixels: int) -> Prepared:
    """The request's input rows for model; BadRequest when the model cannot answer it, or when its images
    (n x resolution^2 pixels) are over max_pixels. A prompt is encoded here: call it off the event loop."""
    where = f"model {model.name}"
    check_pixels(req.n, model.meta.resolution, max_pixels)
    if req.prompt is not None:
        c = prompt_condition(model, req.prompt)
    else:
        c = sampling_checked(condition_rows, model.meta, list(req.tags) if req.tags else None, req.n, req.seed,
                             where)
        tags_seen_together(model, req.tags)
    psi = sampling_checked(check_truncation, model.meta, req.truncation, where)
    rows = sampling_checked(packed_rows, model.meta.z_dim, req.n, req.seed, c, psi, model.meta.takes_psi)
    return Prepared(model, rows)


def prompt_condition(model: LoadedModel, prompt: str) -> torch.Tensor:
    """The one place a prompt becomes a model's condition vector: its sentence embedding by the model's own
    encoder (``trainers.sampling.prompt_vector``: offline, at most 300 characters; a model without text
    conditioning, an empty or a too long prompt is a BadRequest)."""
    return sampling_checked(prompt_vector, model.meta, prompt, f"model {model.name}")


def tags_seen_together(model: LoadedModel, tags: tuple[str, ...] | None) -> None:
    """BadRequest naming the tags of a request that the model's training data never has together."""
    if tags and model.meta.conditioning == "tags":
        try:
            check_together(model.meta, list(tags), f"model {model.name}")
        except NeverTogether as err:
            raise BadRequest(str(err)) from None


def check_pixels(n: int, resolution: int, max_pixels: int, field: str = "n", noun: str = "images") -> None:
    """BadRequest naming the budget when n images (a walk: frames) of resolution x resolution are over
    max_pixels; field is the request's field that asks n."""
    pixels = n * resolution * resolution
    if pixels > max_pixels:
        most = max_pixels // (resolution * resolution)
        advice = f"ask for at most {most} {noun}" if most else "no request of this model fits it"
        raise BadRequest(f"{field}={n} {noun} of {resolution}x{resolution} are {pixels:,} pixels, over this endpoint's "
                         f"budget of {max_pixels:,} pixels per request (max_request_pixels): {advice}")


def _no_lone_surrogate(raw: dict[str, Any]) -> None:
    """BadRequest naming where a string of the body holds a lone surrogate (JSON allows "\\ud800"; no
    tokenizer, encoder or JSON answer takes it)."""
    for key, value in raw.items():
        for where, text in ((f"field name {key!r}", key), *_strings(key, value)):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise BadRequest(f"{where} holds a lone surrogate ({text[err.start]!r} at character {err.start}): "
                                 "send Unicode text") from None


def _strings(key: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(f"field {key!r}", value)]
    if isinstance(value, list):
        return [(f"field {key!r}", item) for item in value if isinstance(item, str)]
    return []


def integer_field(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {value!r}"[:300])
    return value


def tags_field(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise BadRequest("tags must be a list of strings (or one comma-separated string)")
    tags = tuple(t.strip() for t in value if t.strip())
    return tags or None


def sampling_checked(check, *args):
    """check(*args), its SamplingError a BadRequest with the same message."""
    try:
        return check(*args)
    except SamplingError as err:
        raise BadRequest(str(err)) from None


def _short(err: Exception, limit: int = 200) -> str:
    text = str(err)
    return text if len(text) <= limit else text[:limit] + "..."
