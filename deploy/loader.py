"""Loading a registered generator from MLflow: which version an alias names, and that version.

The tracking server and its credentials come from the replica's environment
(``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``); nothing here takes them
as arguments, so they never pass through a config, a log or an error.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from deploy.model_ref import ModelRef
from trainers.generator_metadata import GeneratorMetadata, MetadataError, read_metadata
from trainers.safe_model import UnsafeModelError, load_checked


class LoadError(RuntimeError):
    """A version that cannot be found or loaded; the message names it."""


@dataclass(frozen=True)
class LoadedModel:
    """One loaded version: what a request is answered with, from start to end, even across a swap."""

    name: str
    version: int
    alias: str | None
    generator: Any
    meta: GeneratorMetadata
    device: str = "cpu"

    def describe(self) -> dict[str, Any]:
        """GET /model's answer."""
        return {"name": self.name, "version": self.version, "alias": self.alias,
                "vocabulary": list(self.meta.vocabulary), "resolution": self.meta.resolution,
                "conditioning": self.meta.conditioning, "arch": self.meta.arch,
                "truncation": self.meta.takes_psi, "input": self.meta.input}


def resolve_version(ref: ModelRef) -> int:
    """The version ref names now: the alias's current version, or the pinned one."""
    if not ref.follows_alias:
        return int(ref.version)
    from mlflow.tracking import MlflowClient

    try:
        return int(MlflowClient().get_model_version_by_alias(ref.name, ref.alias).version)
    except Exception as err:  # noqa: BLE001 - MLflow raises several kinds for a missing model or alias
        raise LoadError(f"cannot resolve {ref}: {type(err).__name__}: {_short(err)}") from None


def load_version(ref: ModelRef, version: int, device: str = "cpu") -> LoadedModel:
    """Version `version` of ref's model with its ganray metadata, in eval mode on device."""
    import mlflow

    uri = f"models:/{ref.name}/{version}"
    tmp = tempfile.mkdtemp(prefix="ganray-model-")
    try:  # only a pt2 generator loads: a pickle-format version could run code (trainers.safe_model)
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            info = mlflow.models.Model.load(local)
            generator = load_checked(local, uri, lambda d: mlflow.pytorch.load_model(d, map_location="cpu"))
        except UnsafeModelError as err:
            raise LoadError(str(err)) from None
        except Exception as err:  # noqa: BLE001
            raise LoadError(f"cannot load {uri}: {type(err).__name__}: {_short(err)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        meta = read_metadata(info.metadata, uri)
    except MetadataError as err:
        raise LoadError(str(err)) from None
    if device != "cpu":
        generator = generator.to(device)
    if meta.conditioning == "text":  # load the sentence encoder now, not on the first prompt (~7 s)
        from trainers.conditioning.encoder import load as load_encoder

        load_encoder(meta.text_encoder)
    return LoadedModel(ref.name, int(version), ref.alias, generator, meta, device)


def _short(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."
