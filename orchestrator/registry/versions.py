"""The MLflow model registry's write side: register a job's generator, find its version again, describe versions.

A registered version is the EMA generator in MLflow's ``pt2`` format with one input
``[z | c]`` and ganray's metadata (``trainers.generator_metadata``); its tags carry the
step, kimg, the dataset hash, the spec digest, the code revision, the run, the checkpoint it
came from (a copy kept while the version exists), a fine-tune's source (``init_from.*``) and
every metric of its evaluation (``metric.<name>``, named as evaluations report them) with
``eval_settings``. Registering is idempotent (one version per run and checkpoint),
and the alias ``candidate`` follows the newest version. Resolving a reference and loading a
version is ``deploy.loader``'s (the one read path, shared with the server). No Ray here.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import replace
from typing import Any, Iterator

from mlflow.tracking import MlflowClient

from orchestrator.job.init_source import lineage_of
from orchestrator.job.runs import code_revision
from trainers.generator_metadata import METADATA_KEY, GeneratorMetadata

CHECKPOINT_VERSION_TAG = "checkpoint_uri"
METRIC_PREFIX = "metric."
CANDIDATE = "candidate"  # the alias on the newest registered version
NOT_METRICS = ("kimg", "eval_seconds")  # numbers an evaluation carries that measure no quality


def version_tags(meta: GeneratorMetadata, run_id: str, digest: str, checkpoint_uri: str,
                 kimg: float | None = None) -> dict[str, str]:
    """The tags a registered version carries (strings, as MLflow keeps them): where it came from (run,
    checkpoint, step, kimg, dataset, spec digest, code revision) and every number of its evaluation as
    ``metric.<name>`` (named as evaluations report them), with ``eval_settings`` and ``eval_step``."""
    tags = {"step": str(meta.step), "dataset_hash": str(meta.dataset_hash), "spec_digest": digest,
            "code_revision": code_revision(), "run_id": run_id, "arch": meta.arch,
            "conditioning": meta.conditioning, CHECKPOINT_VERSION_TAG: checkpoint_uri}
    if meta.text_encoder:
        tags["text_encoder"] = meta.text_encoder
        tags["text_pooling"] = str(meta.text_pooling)
    ev = dict(meta.evaluation)
    kimg = ev.get("kimg") if kimg is None and ev.get("step") == meta.step else kimg
    if kimg is not None:
        tags["kimg"] = f"{float(kimg):.6g}"
    if "step" in ev:
        tags["eval_step"] = str(ev.pop("step"))
    if isinstance(ev.get("eval_settings"), str):
        tags["eval_settings"] = ev.pop("eval_settings")[:5000]
    tags.update({f"{METRIC_PREFIX}{k}": f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in ev.items()
                 if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return tags


def version_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The metrics a version's tags carry, by name (``metric.fid`` -> ``fid``); NaN for an unreadable value."""
    out = {}
    for k, v in tags.items():
        if k.startswith(METRIC_PREFIX):
            try:
                out[k[len(METRIC_PREFIX):]] = float(v)
            except ValueError:
                out[k[len(METRIC_PREFIX):]] = float("nan")
    return out


def _same_checkpoint(tagged: str | None, uri: str) -> bool:
    """Whether a version's checkpoint tag names the checkpoint of uri: the same URI, or the same checkpoint
    folder (step and generation) in a copy of it (evaluated checkpoints are registered from a kept copy)."""
    if not tagged:
        return False
    if tagged == uri:
        return True
    from trainers.checkpoints.layout import parse_checkpoint_name

    mine = parse_checkpoint_name(uri)
    return mine is not None and parse_checkpoint_name(tagged) == mine


def find_version(client: MlflowClient, model_name: str, run_id: str, checkpoint_uri: str) -> int | None:
    """The version already registered from this run's checkpoint, or None (what makes registering idempotent)."""
    try:
        versions = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return None
    found = [int(v.version) for v in versions if _same_checkpoint((v.tags or {}).get(CHECKPOINT_VERSION_TAG),
                                                                  checkpoint_uri)]
    return max(found) if found else None


def run_versions(client: MlflowClient, model_name: str, run_id: str) -> list[int]:
    """The versions of model_name registered from run_id, oldest first ([] when there is no such model)."""
    try:
        versions = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return []
    return sorted(int(v.version) for v in versions)


def point_candidate(client: MlflowClient, model_name: str, version: int) -> None:
    """Moves the alias ``candidate`` to version when it is the model's newest (never back to an older one)."""
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
    if version < newest:
        return
    try:
        if int(client.get_model_version_by_alias(model_name, CANDIDATE).version) == version:
            return
    except Exception:  # noqa: BLE001 - no candidate yet
        pass
    client.set_registered_model_alias(model_name, CANDIDATE, str(version))


def register_checkpoint(client: MlflowClient, run_id: str, model_name: str, checkpoint_uri: str, digest: str) -> int:
    """The version of model_name registered from a checkpoint of run_id: found again, or registered now (its
    EMA generator, with tags from the checkpoint); ``candidate`` moves to it when it is the newest."""
    from trainers.checkpoints.copies import local_copy
    from trainers.checkpoints.format import generator_from_checkpoint
    from trainers.checkpoints.storage import open_storage

    version = find_version(client, model_name, run_id, checkpoint_uri)
    if version is None:
        with local_copy(*open_storage(checkpoint_uri)) as d:
            generator, info = generator_from_checkpoint(d)
        version = register_generator(client, run_id, model_name, generator, GeneratorMetadata.from_checkpoint_info(info),
                                     digest, checkpoint_uri, kimg=info.get("images_seen", 0) / 1000)
    point_candidate(client, model_name, version)
    return version


def register_generator(client: MlflowClient, run_id: str, model_name: str, generator, meta: GeneratorMetadata,
                       digest: str, checkpoint_uri: str, kimg: float | None = None) -> int:
    """Logs the generator to the run and registers it as a version of model_name; returns the version. A
    StyleGAN2 also gets its mapping, synthesis and noise maps exported into the model folder (the metadata's
    ``exports``, ``trainers.exports``)."""
    import tempfile

    import mlflow
    import numpy as np
    import torch

    from trainers.networks import PackedInputGenerator, StyleGan2Generator

    # pt2 (torch.export) format; a batch of 2 keeps the batch dimension dynamic (1 would be specialised).
    example = np.zeros((2, meta.input_width), dtype=np.float32)
    run = client.get_run(run_id)
    status = run.info.status
    with (tempfile.TemporaryDirectory(prefix="ganray-exports-") as parts_dir,
          _mlflow_pointed_at(client.tracking_uri)):
        extra_files = None
        if isinstance(generator, StyleGan2Generator):
            from trainers.exports import export_parts

            files, exports = export_parts(generator.eval(), meta.input_width, parts_dir)
            extra_files, meta = [str(f) for f in files], replace(meta, exports=exports)
        with mlflow.start_run(run_id=run_id):
            model_info = mlflow.pytorch.log_model(
                PackedInputGenerator(generator).eval(), name="generator", input_example=example,
                metadata={METADATA_KEY: meta.to_dict()}, serialization_format="pt2", extra_files=extra_files,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "ganray"], step=int(meta.step or 0))
        client.update_run(run_id, status=status)  # leaving start_run ended the run; its lifecycle decides that
        mv = mlflow.register_model(model_info.model_uri, model_name,
                                   tags={**version_tags(meta, run_id, digest, checkpoint_uri, kimg),
                                         **lineage_of(run.data.params)})
    return int(mv.version)


URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _mlflow_pointed_at(uri: str) -> Iterator[None]:
    """mlflow's fluent API on uri for the block. mlflow.set_tracking_uri/set_registry_uri also write
    os.environ (for child processes); the caller's environment and mlflow's defaults are put back after."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in URI_VARIABLES}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _number(text: str | None, kind=float):
    try:
        value = kind(float(text)) if text is not None else None
    except ValueError:
        return None
    return None if isinstance(value, float) and math.isnan(value) else value


def version_record(mv) -> dict[str, Any]:
    """What ``ganray models show`` says of one version, as JSON types (version an int, aliases a list,
    metrics by name; a NaN metric is null)."""
    tags = mv.tags or {}
    lineage = None
    if tags.get("lineage.source_model"):
        lineage = {"source_model": tags["lineage.source_model"],
                   "source_version": _number(tags.get("lineage.source_version"), int),
                   "source_run": tags.get("lineage.source_run") or None}
    metrics = {k: (None if math.isnan(v) else v) for k, v in sorted(version_metrics(tags).items())}
    started_from = {k.removeprefix("init_from."): v for k, v in sorted(lineage_of(tags).items())} or None
    return {"name": mv.name, "version": int(mv.version), "aliases": sorted(mv.aliases or []),
            "run_id": mv.run_id, "step": _number(tags.get("step"), int), "kimg": _number(tags.get("kimg")),
            "metrics": metrics, "eval_settings": tags.get("eval_settings"),
            "eval_step": _number(tags.get("eval_step"), int), "arch": tags.get("arch"),
            "dataset_hash": tags.get("dataset_hash"), "spec_digest": tags.get("spec_digest"),
            "code_revision": tags.get("code_revision"), "checkpoint_uri": tags.get(CHECKPOINT_VERSION_TAG),
            "lineage": lineage, "init_from": started_from, "source": mv.source,
            "created_ms": int(mv.creation_timestamp or 0)}


def model_versions(client: MlflowClient, name: str) -> list:
    """Every version of a registered model, newest first, with its aliases."""
    versions = client.search_model_versions(f"name='{name}'")
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    for mv in versions:
        mv.aliases = sorted(aliases.get(str(mv.version), []))
    return sorted(versions, key=lambda mv: -int(mv.version))
