"""``model.init_from``: where a new job's first weights come from, and whether they fit its networks.

A fine-tune (StyleGAN2-ADA's ``--resume``) starts a new job from a model it did not train:

- a registered version: ``NAME@ALIAS``, ``NAME/VERSION``, either with ``models:/`` in front
  (``trainers.model_ref``'s one grammar); its weights are read from the training checkpoint the
  version was registered from (the registry keeps one per version);
- a finished job: ``job:NAME`` (its final checkpoint).

A bare ``NAME`` is refused: it could be either. The source applies at a job's first start only; a
resume continues from the job's own checkpoints. A source is usable when every architecture field
(:data:`ARCH_FIELDS`, and the resolution) is the new spec's; the tag vocabulary may differ
(``trainers.warm_start`` copies the rows of the tags both share). Parsing and comparing only: no
MLflow, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainers.errors import GanrayError, UsageError
from trainers.model_ref import PREFIX, ModelRef, parse_ref

JOB_PREFIX = "job:"
FORMS = "NAME@ALIAS, NAME/VERSION (a registered version; models:/ in front is optional) or job:NAME (a finished job)"
# what must match between a source and the new job; per architecture, the fields its networks are built from
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "dcgan": ("arch", "z_dim", "channels", "channels_max", "conditioning"),
    "cond-dcgan": ("arch", "z_dim", "channels", "channels_max", "embed_dim", "conditioning"),
    "stylegan2": ("arch", "z_dim", "channels", "channels_max", "w_dim", "mapping_layers", "conditioning"),
}
TEXT_FIELDS = ("embed_dim", "text_encoder", "text_pooling")  # a text model's too: the same encoder and pooling


@dataclass(frozen=True)
class InitSource:
    """A registered version (model) or a finished job (job), as ``model.init_from`` names it."""

    model: ModelRef | None = None
    job: str | None = None

    def __str__(self) -> str:
        return f"{JOB_PREFIX}{self.job}" if self.job else str(self.model)


def parse_source(text: Any) -> InitSource:
    """The source text names; UsageError naming the problem (a bare name is ambiguous) and the forms."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"model.init_from is empty: use {FORMS}")
    if text.startswith(JOB_PREFIX):
        from trainers.spec import job_name_fault

        job = text[len(JOB_PREFIX):]
        fault = job_name_fault(job)
        if fault:
            raise UsageError(f"model.init_from={text!r}: the job name {job!r} {fault}")
        return InitSource(job=job)
    if "@" not in text and "/" not in text.removeprefix(PREFIX):
        raise UsageError(f"model.init_from={text!r} is ambiguous: a bare name could be a registered model or a "
                         f"job; write {text}@ALIAS or {text}/VERSION for a registered version, job:{text} for "
                         "a finished job")
    try:
        return InitSource(model=parse_ref(text, need_version=True, version_option=False))
    except UsageError as err:
        raise UsageError(f"model.init_from: {err}") from None


class SourceError(GanrayError, ValueError):
    """A source checkpoint whose architecture cannot be read; the message says why."""


def source_fields(state: dict[str, Any]) -> dict[str, Any]:
    """The architecture of a checkpoint's networks: its model section, validated as a spec's is (a stored spec
    read as it ran), and the resolution its generator was built at. SourceError when it has neither."""
    from trainers.spec import ModelSpec, read_stored_spec

    stored, config = state.get("spec"), state.get("generator_config")
    if not isinstance(stored, dict) or not isinstance(config, dict) or "resolution" not in config:
        raise SourceError("the source checkpoint holds no spec or generator config to compare with")
    try:
        model = ModelSpec.model_validate(read_stored_spec(stored)["model"])
    except (KeyError, ValueError) as err:
        raise SourceError(f"the source checkpoint's model section does not validate: {err}") from None
    return new_fields(model, config["resolution"])


def new_fields(model, resolution: int) -> dict[str, Any]:
    """The same fields for a new job's model section on a dataset of resolution."""
    fields = dict(model.model_dump())
    fields["w_dim"] = model.w_dim or model.z_dim
    fields["resolution"] = resolution
    return fields


def architecture_changes(source: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field: source -> new`` for each architecture field that differs ([] when the weights fit)."""
    names = {*ARCH_FIELDS.get(source.get("arch"), ()), *ARCH_FIELDS.get(new.get("arch"), ()), "resolution"}
    if "text" in (source.get("conditioning"), new.get("conditioning")):
        names |= set(TEXT_FIELDS)
    order = [*ARCH_FIELDS["stylegan2"], "embed_dim", "resolution", *TEXT_FIELDS]
    return [f"model.{k}: {source.get(k)!r} -> {new.get(k)!r}" if k != "resolution" else
            f"resolution: {source.get(k)} -> {new.get(k)}"
            for k in dict.fromkeys(order) if k in names and source.get(k) != new.get(k)]
