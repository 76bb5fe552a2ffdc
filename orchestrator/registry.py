"""The MLflow model registry: register a job's generator, find a version again, load one.

A registered version is the EMA generator in MLflow's ``pt2`` format with one input
``[z | c]`` and ganray's metadata (``trainers.generator_metadata``); its tags carry the
step, the dataset hash, the spec digest, the code revision, the run, the checkpoint it
came from and every metric of its last evaluation (``metric.<name>``). No Ray here.
"""
from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from orchestrator.runs import code_revision
from trainers.errors import GanrayError, UsageError
from trainers.generator_metadata import METADATA_KEY, GeneratorMetadata, MetadataError, read_metadata

CHECKPOINT_VERSION_TAG = "checkpoint_uri"


class RegistryError(GanrayError, LookupError):
    """A model or version that cannot be found or loaded; the message names it."""


def version_tags(meta: GeneratorMetadata, run_id: str, digest: str, checkpoint_uri: str) -> dict[str, str]:
    """The tags a registered version carries (strings, as MLflow keeps them)."""
    tags = {"step": str(meta.step), "dataset_hash": str(meta.dataset_hash), "spec_digest": digest,
            "code_revision": code_revision(), "run_id": run_id, "arch": meta.arch,
            "conditioning": meta.conditioning, CHECKPOINT_VERSION_TAG: checkpoint_uri}
    tags.update({f"metric.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v))[:5000]
                 for k, v in meta.evaluation.items() if "." not in k})
    return tags


def find_version(c: MlflowClient, model_name: str, run_id: str, checkpoint_uri: str) -> int | None:
    """The version already registered from this run's checkpoint, or None (what makes finishing idempotent)."""
    try:
        versions = c.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return None
    found = [int(v.version) for v in versions if (v.tags or {}).get(CHECKPOINT_VERSION_TAG) == checkpoint_uri]
    return max(found) if found else None


def register_generator(c: MlflowClient, run_id: str, model_name: str, generator, meta: GeneratorMetadata,
                       digest: str, checkpoint_uri: str) -> int:
    """Logs the generator to the run and registers it as a version of model_name; returns the version."""
    import mlflow
    import numpy as np
    import torch

    from trainers.networks import PackedInputGenerator

    # pt2 (torch.export) format; a batch of 2 keeps the batch dimension dynamic (1 would be specialised).
    example = np.zeros((2, meta.z_dim + meta.c_dim), dtype=np.float32)
    mlflow.set_tracking_uri(c.tracking_uri)
    mlflow.set_registry_uri(c.tracking_uri)
    status = c.get_run(run_id).info.status
    with mlflow.start_run(run_id=run_id):
        model_info = mlflow.pytorch.log_model(
            PackedInputGenerator(generator).eval(), name="generator", input_example=example,
            metadata={METADATA_KEY: meta.to_dict()}, serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "ganray"])
    c.update_run(run_id, status=status)  # leaving start_run ended the run; its lifecycle decides that
    mv = mlflow.register_model(model_info.model_uri, model_name,
                               tags=version_tags(meta, run_id, digest, checkpoint_uri))
    return int(mv.version)


def parse_model_uri(uri: str) -> str:
    """A model reference as MLflow takes it; UsageError for anything but models:/NAME/V or models:/NAME@ALIAS."""
    rest = uri.removeprefix("models:/") if uri.startswith("models:/") else None
    if not rest or ("/" not in rest and "@" not in rest) or rest.startswith(("/", "@")):
        raise UsageError(f"model URI must look like models:/NAME/VERSION or models:/NAME@ALIAS, got {uri!r}")
    return uri


def load_generator(model_uri: str) -> tuple[Any, GeneratorMetadata]:
    """(packed generator in eval mode, its metadata) of a registered version.

    Only a pytorch model in the pt2 format loads (``trainers.safe_model``): a pickle-format version is
    refused before any of it is deserialised, and MLflow's check that the pt2 archive holds no pickle
    stays on whatever the environment says."""
    import shutil
    import tempfile

    import mlflow

    from trainers.safe_model import UnsafeModelError, check_pt2_model, pickle_refused

    model_uri = parse_model_uri(model_uri)
    tmp = tempfile.mkdtemp(prefix="ganray-model-")
    try:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
            info = mlflow.models.Model.load(local)
        except Exception as err:  # noqa: BLE001 - MLflow raises several kinds for a missing model
            raise RegistryError(f"cannot load {model_uri}: {type(err).__name__}: {err}") from None
        try:
            check_pt2_model(local, model_uri)
        except UnsafeModelError as err:
            raise RegistryError(str(err)) from None
        try:
            with pickle_refused():
                loaded = mlflow.pytorch.load_model(local, map_location="cpu")
        except Exception as err:  # noqa: BLE001
            raise RegistryError(f"cannot load {model_uri}: {type(err).__name__}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        meta = read_metadata(info.metadata, model_uri)
    except MetadataError as err:
        raise RegistryError(str(err)) from None
    try:
        loaded.eval()
    except NotImplementedError:  # a pt2 (exported) generator: traced in eval mode already
        pass
    return loaded, meta
