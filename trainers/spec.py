"""The JobSpec model: every field, its type, its bounds and its one default.

Workers and the driver use this one model. The driver validates the user's YAML with it
(``orchestrator/job/spec_file.py``: files, overrides, error messages); a worker gets the spec as a
plain dict (``JobSpec.to_dict()``) and validates it again with ``JobSpec.model_validate``,
so every default a worker reads is the one written here, never one of its own.

A spec stored earlier (a run's ``spec.json``, a checkpoint's) is read as it ran (``read_stored_spec``),
is the same spec when its digest is (``same_spec``), and every refusal of a changed one says how it
differs in one text (``spec_difference``: the driver, resume and ``ganray submit``).
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers.conditioning.encoder import DEFAULT_TEXT_ENCODER, TEXT_ENCODERS
from trainers.conditioning.phrases import DEFAULT_POOLING, POOLINGS, check_pooling
from trainers.errors import GanrayError
from trainers.model_ref import NAME_RULE, name_fault
from trainers.urls import url_problem

Arch = Literal["dcgan", "cond-dcgan", "stylegan2"]
ARCHES: tuple[str, ...] = get_args(Arch)  # the architecture names, defined once
CONDITIONAL_ARCHES: tuple[str, ...] = ("cond-dcgan", "stylegan2")
MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024
RESOLUTION_RULE = f"a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}"
JOB_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
JOB_NAME_RULE = "must be 1-63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"


def job_name_fault(name: Any) -> str | None:
    """Why name is no job name (JOB_NAME_RULE), or None for a valid one."""
    return None if isinstance(name, str) and JOB_NAME.fullmatch(name) else JOB_NAME_RULE


def is_valid_resolution(resolution: Any) -> bool:
    """True when resolution is an int, a power of two, from 16 to 1024: what every network builds."""
    return (isinstance(resolution, int) and not isinstance(resolution, bool)
            and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and not resolution & (resolution - 1))


def check_resolution(resolution: Any) -> None:
    """Raises ValueError naming the rule unless resolution is a power of two from 16 to 1024."""
    if not is_valid_resolution(resolution):
        raise ValueError(f"resolution must be {RESOLUTION_RULE}, got {resolution}")


def discriminator_blocks(resolution: int) -> int:
    """How many blocks D has at resolution, every arch alike: one per halving from R down to 4x4, block 0
    reading the image (what ``train.freeze_d`` counts; ``trainers/freezing.py``)."""
    return resolution.bit_length() - 3


def check_freeze_d(freeze_d: int, resolution: int) -> None:
    """Raises ValueError naming train.freeze_d unless D at resolution has at least freeze_d blocks."""
    blocks = discriminator_blocks(resolution)
    if freeze_d > blocks:
        raise ValueError(f"train.freeze_d={freeze_d} but D has {blocks} blocks at {resolution}x{resolution} "
                         f"(one per halving down to 4x4): freeze at most {blocks}")


def check_storage_url(url: str | None) -> str | None:
    """A storage URL field's validator: no credentials in it, a known scheme (the error never echoes a secret)."""
    if url is not None:
        problem = url_problem(url)
        if problem:
            raise ValueError(problem)
    return url


class _Strict(BaseModel):
    # Strict types (no "100" for 100, no true for 1), finite floats; inputs left out of pydantic's own
    # messages (orchestrator/job/spec_file.py prints them, redacted).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              hide_input_in_errors=True)


class DataSpec(_Strict):
    url: str = Field(min_length=1, description="fsspec URL or local path of an ingested dataset")
    resolution: int | None = Field(None, description="must match the dataset's; None takes it from the manifest")

    check_url = field_validator("url")(check_storage_url)

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v):
        if v is not None and not is_valid_resolution(v):
            raise ValueError(f"must be {RESOLUTION_RULE}")
        return v


class ModelSpec(_Strict):
    arch: Arch
    z_dim: int = Field(128, ge=1, le=1024)
    conditioning: Literal["none", "tags", "text"] = Field(
        "none", description="none | tags | text (captions/prompts, StackGAN); default: tags for cond-dcgan, "
                            "none otherwise")
    text_encoder: str = Field(DEFAULT_TEXT_ENCODER,
                              description="text: the sentence encoder (a package that ships its model; offline)")
    text_pooling: str = Field(DEFAULT_POOLING, description=f"text: {' | '.join(POOLINGS)} (the mean of the "
                                                           "content phrases' embeddings, or one of the whole text)")
    channels: int = Field(64, ge=4, le=1024, description="width of the highest-resolution layers")
    channels_max: int = Field(512, ge=4, le=2048, description="cap on any layer's width")
    embed_dim: int = Field(32, ge=1, le=1024, description="cond-dcgan: size of the tag embedding joined to z; "
                                                          "text: size of the conditioning augmentation's sample")
    w_dim: int | None = Field(None, ge=1, le=1024, description="stylegan2: W space size; default z_dim")
    mapping_layers: int = Field(8, ge=1, le=16, description="stylegan2: depth of the mapping network")
    mbstd_group: int = Field(4, ge=1, description="stylegan2: minibatch standard deviation group size")
    init_from: str | None = Field(
        None, description="a fine-tune's first G, D and G_ema: a registered version (NAME@ALIAS, NAME/VERSION) or "
                          "a finished job (job:NAME); at the job's first start only (trainers/init_from.py)")

    @model_validator(mode="before")
    @classmethod
    def _default_conditioning(cls, raw):
        if isinstance(raw, dict) and raw.get("conditioning") is None and raw.get("arch") == "cond-dcgan":
            raw = {**raw, "conditioning": "tags"}
        return raw

    @field_validator("text_encoder")
    @classmethod
    def _known_encoder(cls, v):
        if v not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {v!r}; known: {', '.join(TEXT_ENCODERS)} (no other model is "
                             "ever downloaded)")
        return v

    @field_validator("text_pooling")
    @classmethod
    def _known_pooling(cls, v):
        return check_pooling(v)

    @field_validator("init_from")
    @classmethod
    def _source(cls, v):
        from trainers.init_from import parse_source

        if v is not None:
            try:
                parse_source(v)
            except GanrayError as err:
                raise ValueError(str(err).removeprefix(f"model.init_from={v!r} ").removeprefix("model.init_from: "))
        return v

    @model_validator(mode="after")
    def _conditioning_fits_arch(self):
        if self.conditioning != "none" and self.arch not in CONDITIONAL_ARCHES:
            raise ValueError(f"model.arch={self.arch} is unconditional; use {' or '.join(CONDITIONAL_ARCHES)} for "
                             f"model.conditioning={self.conditioning}")
        if self.arch == "cond-dcgan" and self.conditioning == "none":
            raise ValueError("model.arch=cond-dcgan needs model.conditioning=tags or text (use dcgan for none)")
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
    aux_weight: float = Field(1.0, ge=0, description="weight of D's auxiliary loss (cond-dcgan): multi-label tags, "
                                                     "or the text embedding's cosine")
    kl_weight: float = Field(2.0, ge=0, description="text: weight of the conditioning augmentation's KL term "
                                                    "(StackGAN's 2.0)")
    mismatch_weight: float = Field(1.0, ge=0, description="text: weight of D's real-image-with-mismatched-text term "
                                                          "(matching-aware D)")
    style_mixing: float = Field(0.9, ge=0, le=1,
                                description="stylegan2: probability of mixing two latents (StyleGAN2's 0.9)")
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
    freeze_d: int = Field(0, ge=0, description="FreezeD: D's first K blocks from the input side keep their weights "
                                               "for the whole job (0: none)")
    freeze_g_mapping: bool = Field(False, description="stylegan2: the mapping network's layers keep their weights "
                                                      "(the condition's embedding still trains)")
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
    metrics: list[Literal["fid", "kid", "pr", "tag_accuracy", "text_agreement"]] = Field(
        default_factory=list, description="what to evaluate; fid/kid/pr (precision and recall) use Inception "
                                          "features")
    every_steps: int | None = Field(None, ge=1, description="evaluate every N steps; None: at the last step only")
    fid_weights: str | None = Field(None, description="local pt_inception-2015-12-05 weights; or GANRAY_FID_WEIGHTS; "
                                                      "neither: downloaded once into the cache")
    num_samples: int = Field(10000, ge=2, description="generated images for FID/KID/PR")
    num_real: int = Field(50000, ge=2, description="at most this many real images for FID/KID statistics "
                                                    "(KID and PR use up to 10000 of them)")
    tag_samples: int = Field(1000, ge=1, description="generated images judged for per-tag accuracy")
    judge_epochs: int = Field(15, ge=1, description="epochs of the tag judge's training on the real images")


class ScalingSpec(_Strict):
    workers: int | tuple[int, int] = 1
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_type(cls, v):
        """A count or a [min, max] pair of ints (a list, as YAML and JSON write it); no bools, no strings."""
        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)
        if isinstance(v, list):
            v = tuple(v)
        if not (is_int(v) or (isinstance(v, tuple) and len(v) == 2 and all(map(is_int, v)))):
            raise ValueError("must be a count or [min, max] with 1 <= min <= max")
        return v

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
        """Every worker count the job may run with: the count, or min..max inclusive."""
        return [self.workers] if isinstance(self.workers, int) else list(range(self.workers[0], self.workers[1] + 1))


class CheckpointSpec(_Strict):
    every_steps: int = Field(1000, ge=1)
    keep: int = Field(3, ge=1)
    storage: str | None = Field(None, description="URL or path; default: the local stack's storage")

    check_storage = field_validator("storage")(check_storage_url)


class PreemptionSpec(_Strict):
    max_preemptions: int = Field(-1, ge=-1, description="-1: unlimited")
    max_failures: int = Field(3, ge=-1)
    check_every_s: float = Field(1.0, ge=0, description="how often workers ask Ray Train for a notice (a collective)")
    margin_s: float = Field(5.0, ge=0, description="safety margin before the deadline for the JIT checkpoint")


# Metric names, one naming: the spec names a measure (registry.best_by) fid, kid, tag_accuracy, precision or
# recall; evaluations report it, and the run's MLflow metrics and the registered versions' tags (metric.<name>)
# carry it, under REPORTED_AS's name (tag_accuracy -> tag_acc, with tag_acc.<tag>, tag_acc_min, ...). Wherever a
# user types a metric's name, either spelling is accepted. eval.metrics lists what to compute: a measure's own
# name, or MEASURED_BY's entry for it (pr computes precision and recall).
REPORTED_AS = {"fid": "fid", "kid": "kid", "tag_accuracy": "tag_acc", "precision": "precision", "recall": "recall"}
LOWER_IS_BETTER = frozenset({"fid", "kid"})
MEASURED_BY = {"precision": "pr", "recall": "pr"}


def measured_by(measure: str) -> str:
    """The eval.metrics entry that computes a measure of registry.best_by (precision -> pr, fid -> fid)."""
    return MEASURED_BY.get(measure, measure)


def spec_metric(name: str) -> str | None:
    """The spec's name of a measure typed either way (tag_acc or tag_accuracy -> tag_accuracy), else None."""
    return next((s for s, reported in REPORTED_AS.items() if name in (s, reported)), None)


def metric_aliases(name: str) -> list[str]:
    """name and its other spelling, also as the prefix of a derived key (tag_accuracy.hat <-> tag_acc.hat,
    tag_accuracy_min <-> tag_acc_min); name first."""
    out = [name]
    for a, b in ((s, r) for s, r in REPORTED_AS.items() if s != r):
        for x, y in ((a, b), (b, a)):
            rest = name[len(x):]
            if name.startswith(x) and (not rest or rest[0] in "._"):
                out.append(y + rest)
    return list(dict.fromkeys(out))


with warnings.catch_warnings():
    # `register` is the documented field name; pydantic only warns that BaseModel once had such a method.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class RegistrySpec(_Strict):
        model_name: str | None = Field(None, description="default: the job name")
        register: Literal["best", "last", "every", "none"] = Field(
            "last", description="best: each evaluated checkpoint that beats every earlier one; every: each "
                                "evaluated checkpoint; last: the final generator; none: nothing")
        best_by: Literal["fid", "kid", "tag_accuracy", "precision", "recall"] | None = Field(
            None, description="the measure of register=best (unused otherwise): fid, kid (lower is better), "
                              "tag_accuracy (tag_acc too), precision or recall (higher is better)")

        @field_validator("model_name")
        @classmethod
        def _name(cls, v):
            fault = name_fault(v) if v is not None else None
            if fault:
                raise ValueError(f"must be a model name of ganray's grammar, {NAME_RULE} ({fault})")
            return v

        @field_validator("best_by", mode="before")
        @classmethod
        def _either_spelling(cls, v):
            return (spec_metric(v) or v) if isinstance(v, str) else v

        @model_validator(mode="after")
        def _best_needs_a_measure(self):
            if self.register == "best" and self.best_by is None:
                raise ValueError("registry.register=best needs registry.best_by: fid, kid, tag_accuracy, "
                                 "precision or recall")
            return self

        @property
        def evaluated(self) -> bool:
            """Whether versions come from evaluated checkpoints during the run (best, every)."""
            return self.register in ("best", "every")


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
        if job_name_fault(v):
            raise ValueError(JOB_NAME_RULE)
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
        if "tag_accuracy" in self.eval.metrics and self.model.conditioning != "tags":
            raise ValueError(f"eval.metrics has tag_accuracy but model.conditioning={self.model.conditioning} "
                             "(tag_accuracy needs tags; text models: text_agreement)")
        if "text_agreement" in self.eval.metrics and self.model.conditioning != "text":
            raise ValueError(f"eval.metrics has text_agreement but model.conditioning={self.model.conditioning} "
                             "(it needs text)")
        return self

    @model_validator(mode="after")
    def _freezing_fits_model(self):
        t = self.train
        if t.freeze_g_mapping and self.model.arch != "stylegan2":
            raise ValueError(f"train.freeze_g_mapping is for model.arch=stylegan2 (its mapping network); "
                             f"model.arch={self.model.arch} has no mapping network")
        if t.freeze_d and self.data.resolution is not None:  # else the dataset's resolution decides, at model build
            check_freeze_d(t.freeze_d, self.data.resolution)
        return self

    @model_validator(mode="after")
    def _registry_fits_eval(self):
        r, ev = self.registry, self.eval
        if not r.evaluated:
            return self
        need = measured_by(r.best_by) if r.best_by is not None else None
        if need is not None and need not in ev.metrics:
            what = "it" if need == r.best_by else f"{need} (precision and recall)"
            raise ValueError(f"registry.best_by={r.best_by} is not measured: add {what} to eval.metrics "
                             f"(now {list(ev.metrics)})")
        if not ev.metrics:
            raise ValueError(f"registry.register={r.register} registers evaluated checkpoints, but eval.metrics "
                             "is empty")
        if ev.every_steps and ev.every_steps % self.checkpoint.every_steps:
            raise ValueError(f"registry.register={r.register} registers evaluated checkpoints: eval.every_steps="
                             f"{ev.every_steps} must be a multiple of checkpoint.every_steps="
                             f"{self.checkpoint.every_steps} (an evaluation between checkpoints has none to register)")
        return self

    @property
    def model_name(self) -> str:
        """The registered model's name: registry.model_name, else the job name."""
        return self.registry.model_name or self.name

    def to_dict(self) -> dict[str, Any]:
        """The full spec, every default filled in, as plain JSON types (what workers and checkpoints get)."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A hash (16 hex digits) of the values that differ from their defaults.

        A value written out at its default hashes as if it were left out, so adding a field with a
        default to the model changes no existing spec's digest; changing any value changes it.
        """
        changed = self.model_dump(mode="json", exclude_defaults=True)
        if self.model.conditioning == "text":  # its default changed once (read_stored_spec): always counted
            changed.setdefault("model", {})["text_pooling"] = self.model.text_pooling
        return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:16]


def read_stored_spec(stored: dict[str, Any]) -> dict[str, Any]:
    """A spec dict written by an earlier ganray, with the values it ran under where a default has changed
    since: a text model stored before ``model.text_pooling`` existed embedded whole sentences. Compare
    and validate stored specs through this, so that such a job is a changed spec under today's default
    and resumes with ``model.text_pooling: sentence``."""
    as_stored = stored.get("model")  # a raw dict as written then, not a validated section
    if isinstance(as_stored, dict) and as_stored.get("conditioning") == "text" and "text_pooling" not in as_stored:
        return {**stored, "model": {**as_stored, "text_pooling": "sentence"}}
    return stored


def same_spec(stored: dict[str, Any], spec: JobSpec) -> bool:
    """True when a stored spec dict (an earlier run's spec.json, a checkpoint's) parses under today's model
    to spec's digest: one recorded under an older digest scheme, or before a field with a default was added,
    is the same spec (read as it ran: :func:`read_stored_spec`). A stored spec that no longer validates is a
    changed one."""
    try:
        return JobSpec.model_validate(read_stored_spec(stored)).digest() == spec.digest()
    except ValueError:  # pydantic's ValidationError
        return False


def _flat_json(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested dict as dotted keys, each value written as JSON (strings quoted, lists as lists)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_json(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


def spec_changes(stored: dict[str, Any] | None, spec: JobSpec) -> list[str]:
    """Every field where a stored spec differs from spec, sorted: ``field: old -> new``, values as JSON and
    ``(unset)`` for a field one side lacks; [] when it is the same spec (:func:`same_spec`) or there is none."""
    if not isinstance(stored, dict) or same_spec(stored, spec):
        return []
    old, new = _flat_json(read_stored_spec(stored)), _flat_json(spec.to_dict())
    return [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


SHOWN_CHANGES = 8  # the most fields a refusal names


def spec_difference(stored: dict[str, Any] | None, spec: JobSpec) -> str:
    """How a stored spec differs from spec, as every refusal of a changed spec says it: the first
    SHOWN_CHANGES of :func:`spec_changes` joined by ", ", or "stored spec unavailable" without one."""
    if not isinstance(stored, dict):
        return "stored spec unavailable"
    return ", ".join(spec_changes(stored, spec)[:SHOWN_CHANGES])
