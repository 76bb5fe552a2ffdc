"""The JobSpec: one YAML file that says what to train, on what, with what budget.

Every field but ``name``, ``data.url`` and ``model.arch`` has a default that runs
on a CPU laptop. Unknown or ill-typed fields are errors that name the field and
the value. Endpoints and credentials never belong here.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A JobSpec that cannot run; the message names the field and the value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    url: str = Field(min_length=1, description="fsspec URL or local path of an ingested dataset")
    resolution: int | None = Field(None, description="must match the dataset's; None takes it from the manifest")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v):
        if v is not None and (v < 16 or v > 1024 or v & (v - 1)):
            raise ValueError("must be a power of two from 16 to 1024")
        return v


ARCHES = ("dcgan", "cond-dcgan", "stylegan2")
CONDITIONAL_ARCHES = ("cond-dcgan", "stylegan2")


class ModelSpec(_Strict):
    arch: Literal["dcgan", "cond-dcgan", "stylegan2"]
    z_dim: int = Field(128, ge=1, le=1024)
    conditioning: Literal["none", "tags"] = Field(
        "none", description="none | tags; default: tags for cond-dcgan, none otherwise (text: a later issue)")
    channels: int = Field(64, ge=4, le=1024, description="width of the highest-resolution layers")
    channels_max: int = Field(512, ge=4, le=2048, description="cap on any layer's width")
    embed_dim: int = Field(32, ge=1, le=1024, description="cond-dcgan: size of the tag embedding joined to z")
    w_dim: int | None = Field(None, ge=1, le=1024, description="stylegan2: W space size; default z_dim")
    mapping_layers: int = Field(8, ge=1, le=16, description="stylegan2: depth of the mapping network")
    mbstd_group: int = Field(4, ge=1, description="stylegan2: minibatch standard deviation group size")

    @model_validator(mode="before")
    @classmethod
    def _default_conditioning(cls, raw):
        if isinstance(raw, dict) and raw.get("conditioning") is None and raw.get("arch") == "cond-dcgan":
            raw = {**raw, "conditioning": "tags"}
        return raw

    @model_validator(mode="after")
    def _conditioning_fits_arch(self):
        if self.arch == "dcgan" and self.conditioning == "tags":
            raise ValueError("model.arch=dcgan is unconditional; use cond-dcgan or stylegan2 for "
                             "model.conditioning=tags")
        if self.arch == "cond-dcgan" and self.conditioning == "none":
            raise ValueError("model.arch=cond-dcgan needs model.conditioning=tags (use dcgan for none)")
        return self

    @property
    def conditional(self) -> bool:
        """Whether the networks take a conditioning vector."""
        return self.conditioning != "none"


class TrainSpec(_Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch; divided among workers")
    max_batch_per_worker: int | None = Field(
        None, ge=1, description="largest micro-batch one worker runs at once; more is accumulated")
    lr_g: float = Field(0.0002, gt=0)
    lr_d: float = Field(0.0002, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    loss: Literal["ns", "hinge"] = "ns"
    r1_gamma: float = Field(0.0, ge=0, description="R1 weight; 0 turns it off")
    r1_interval: int = Field(16, ge=1, description="lazy R1: every N D steps, scaled by N (1: every step)")
    dragan_lambda: float = Field(0.0, ge=0, description="DRAGAN gradient penalty weight; 0 turns it off")
    aux_weight: float = Field(1.0, ge=0, description="weight of the auxiliary multi-label loss (cond-dcgan)")
    style_mixing: float = Field(0.9, ge=0, le=1, description="stylegan2: probability of mixing two latents")
    pl_weight: float = Field(0.0, ge=0, description="stylegan2: path length regularisation weight; 0: off")
    pl_interval: int = Field(4, ge=1, description="lazy path length: every N G steps, scaled by N")
    ema: bool = True
    ema_kimg: float | None = Field(None, gt=0, description="G EMA half-life; default batch*10/32 kimg")
    ema_rampup: float | None = Field(0.05, ge=0, description="EMA half-life ramp-up (fraction of images seen)")
    augment: Literal["none", "diffaug"] = "none"
    augment_policy: str = Field("color,translation,cutout", description="DiffAugment ops, comma-separated")
    augment_p: float = Field(1.0, ge=0, le=1,
                             description="probability of each DiffAugment op per image (start value with ada_target)")
    ada_target: float | None = Field(None, gt=0, lt=1, description="adapt augment_p toward E[sign(D(real))]")
    ada_interval: int = Field(4, ge=1, description="steps between augment_p adjustments")
    ada_kimg: float = Field(500, gt=0, description="kimg for augment_p to go from 0 to 1")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    report_every_s: float = Field(2.5, gt=0, description="metrics cadence; Train v2 drains reports every 2 s")

    @field_validator("augment_policy")
    @classmethod
    def _policy(cls, v):
        known = ("color", "translation", "cutout")
        ops = [o.strip() for o in v.split(",") if o.strip()]
        bad = [o for o in ops if o not in known]
        if bad or not ops:
            raise ValueError(f"must be a comma-separated subset of {', '.join(known)}")
        return ",".join(ops)

    @model_validator(mode="after")
    def _one_penalty(self):
        if self.r1_gamma > 0 and self.dragan_lambda > 0:
            raise ValueError("train.r1_gamma and train.dragan_lambda are both set; choose one gradient penalty")
        return self


class EvalSpec(_Strict):
    metrics: list[Literal["fid", "kid", "tag_accuracy"]] = Field(
        default_factory=list, description="what to evaluate; fid/kid need Inception weights")
    every_steps: int | None = Field(None, ge=1, description="evaluate every N steps; None: at the last step only")
    fid_weights: str | None = Field(None, description="local pt_inception-2015-12-05 weights; or GANRAY_FID_WEIGHTS")
    num_samples: int = Field(10000, ge=2, description="generated images for FID/KID")
    num_real: int = Field(50000, ge=2, description="at most this many real images for FID/KID statistics")
    tag_samples: int = Field(1000, ge=1, description="generated images judged for per-tag accuracy")
    judge_epochs: int = Field(15, ge=1, description="epochs of the tag judge's training on the real images")


class ScalingSpec(_Strict):
    workers: int | tuple[int, int] = 1
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v):
        if isinstance(v, int):
            if v < 1:
                raise ValueError("must be >= 1")
        elif not 1 <= v[0] <= v[1]:
            raise ValueError("must be a count or [min, max] with 1 <= min <= max")
        return v

    def allowed_worker_counts(self) -> list[int]:
        return [self.workers] if isinstance(self.workers, int) else list(range(self.workers[0], self.workers[1] + 1))


class CheckpointSpec(_Strict):
    every_steps: int = Field(1000, ge=1)
    keep: int = Field(3, ge=1)
    storage: str | None = Field(None, description="URL or path; default: the local stack's storage")


class PreemptionSpec(_Strict):
    max_preemptions: int = Field(-1, ge=-1, description="-1: unlimited")
    max_failures: int = Field(3, ge=-1)
    check_every_s: float = Field(1.0, ge=0, description="how often workers ask Ray Train for a notice (a collective)")
    margin_s: float = Field(5.0, ge=0, description="safety margin before the deadline for the JIT checkpoint")


with warnings.catch_warnings():
    # `register` is the documented field name; pydantic only warns that BaseModel once had such a method.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class RegistrySpec(_Strict):
        model_name: str | None = Field(None, description="default: the job name")
        register: Literal["last", "none"] = "last"

        @field_validator("model_name")
        @classmethod
        def _name(cls, v):
            if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
                raise ValueError("must be letters, digits, '_', '.', '-' (at most 100)")
            return v


class JobSpec(_Strict):
    name: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec = TrainSpec()
    scaling: ScalingSpec = ScalingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    preemption: PreemptionSpec = PreemptionSpec()
    registry: RegistrySpec = RegistrySpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", v):
            raise ValueError("must be 1-63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _batch_divides(self):
        for w in self.scaling.allowed_worker_counts():
            if self.train.batch_size % w:
                raise ValueError(
                    f"train.batch_size={self.train.batch_size} does not divide by scaling.workers={w}; "
                    "the global batch must divide by every worker count the spec allows")
        if "tag_accuracy" in self.eval.metrics and not self.model.conditional:
            raise ValueError(f"eval.metrics has tag_accuracy but model.arch={self.model.arch} is unconditional "
                             "(model.conditioning=none)")
        return self

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A hash of the whole spec: two runs with the same name must have the same digest."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(err: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tuple[")))
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown field `{loc}` (value {value!r})")
        elif e["type"] == "missing":
            lines.append(f"missing field `{loc}`")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            where = f"field `{loc}`" if loc else "spec"
            lines.append(f"{where}: {msg} (got {value!r})" if loc else f"{msg}")
    return "invalid JobSpec:\n  " + "\n  ".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``a.b=c`` overrides (values parsed as YAML) to a raw spec dict."""
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected FIELD=VALUE, e.g. train.steps=100")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {item!r}: `{p}` is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    return raw


def parse_spec(raw: Any, overrides: list[str] | None = None) -> JobSpec:
    """Validates a raw spec (a mapping) with overrides; raises SpecError naming each bad field."""
    if not isinstance(raw, dict):
        raise SpecError(f"a JobSpec must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(err, raw)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Reads and validates a JobSpec YAML file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"spec file {path} is not valid YAML: {err}") from None
    return parse_spec(raw, overrides)
