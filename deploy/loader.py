"""The read path of a registered generator: the version a reference names, and that version loaded.

The one resolver and loader of ``ganray generate``, the promotion and models commands, ``ganray
serve``'s check and the server's replicas, with one family of errors: :class:`RegistryError`
(a model, version or alias the registry does not have, or a registry that cannot be read) and
:class:`LoadError` (a version that is there but cannot be loaded). Imports neither Ray nor Serve
nor FastAPI, so the CLI imports it too. The replica's client comes from its environment
(``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), the CLI's from its
endpoints; credentials never pass through a config, a log or an error.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from trainers.errors import GanrayError
from trainers.generator_metadata import GeneratorMetadata, MetadataError, read_metadata
from trainers.model_ref import ModelRef
from trainers.safe_model import UnsafeModelError, load_checked, load_exports


class RegistryError(GanrayError, LookupError):
    """A model, version or alias the registry does not have, or a registry that cannot be read; the
    message names it and what the registry has instead."""


class LoadError(RegistryError):
    """A registered version that cannot be loaded: its download fails, it is not a pt2 generator, or it
    lacks ganray's metadata; the message names it."""


@dataclass(frozen=True)
class LoadedModel:
    """One loaded version: what a request is answered with, from start to end, even across a swap."""

    name: str
    version: int
    alias: str | None
    generator: Any
    meta: GeneratorMetadata
    device: str = "cpu"
    # A StyleGAN2 version's exported parts (trainers.exports; None / () for other architectures and for
    # versions registered before them): mapping(zc) -> ws, synthesis(ws, *noise) -> images, the fixed maps.
    mapping: Any | None = None
    synthesis: Any | None = None
    noise: tuple = ()

    @property
    def uri(self) -> str:
        return ModelRef(self.name, version=self.version).uri

    def describe(self) -> dict[str, Any]:
        """GET /model's answer."""
        return {"name": self.name, "version": self.version, "alias": self.alias,
                "vocabulary": list(self.meta.vocabulary), "resolution": self.meta.resolution,
                "conditioning": self.meta.conditioning, "arch": self.meta.arch,
                "truncation": self.meta.takes_psi, "input": self.meta.input}


def registry_client(tracking_uri: str | None = None):
    """A client of the registry at tracking_uri (None: this process's MLFLOW_TRACKING_URI)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def registered_model(client, name: str):
    """The RegisteredModel name; RegistryError when the registry has none (or cannot be read)."""
    try:
        return client.get_registered_model(name)
    except Exception as err:  # noqa: BLE001 - MLflow raises its own kinds for a missing model
        if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model {name!r} at {client.tracking_uri}") from None
        raise RegistryError(f"cannot read the model registry at {client.tracking_uri}: "
                            f"{type(err).__name__}: {_short(err)}") from None


def named_version(client, ref: ModelRef):
    """The ModelVersion ref names now (its version, or its alias's holder); RegistryError naming the
    model's versions and aliases when it has no such one."""
    try:
        if ref.version is not None:
            return client.get_model_version(ref.name, str(ref.version))
        return client.get_model_version_by_alias(ref.name, ref.alias)
    except Exception:  # noqa: BLE001 - MLflow raises its own kinds for a missing model, version or alias
        pass
    model = registered_model(client, ref.name)
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{ref.name}'"))
    missing = f"version {ref.version}" if ref.version is not None else f"alias {ref.alias!r}"
    raise RegistryError(f"model {ref.name!r} has no {missing} "
                        f"(versions: {', '.join(map(str, versions)) or 'none'}; aliases: {aliases})")


def load_version(client, ref: ModelRef, version: int, device: str = "cpu") -> LoadedModel:
    """Version `version` of ref's model with its ganray metadata, in eval mode on device; a text model's
    sentence encoder is loaded too (so its first prompt does not wait ~7 s). LoadError otherwise."""
    generator, meta, (mapping, synthesis, noise) = _download_and_load(client, ref.name, int(version))
    if device != "cpu":
        generator = generator.to(device)
        mapping, synthesis = (part.to(device) if part is not None else None for part in (mapping, synthesis))
        noise = tuple(n.to(device) for n in noise)
    if meta.conditioning == "text":
        from trainers.conditioning.encoder import load as load_encoder

        load_encoder(meta.text_encoder)
    return LoadedModel(ref.name, int(version), ref.alias, generator, meta, device, mapping, synthesis, noise)


def load_named(client, ref: ModelRef, device: str = "cpu") -> LoadedModel:
    """The version ref names now, loaded (:func:`named_version`, then :func:`load_version`)."""
    return load_version(client, ref, int(named_version(client, ref).version), device)


def _download_and_load(client, name: str, version: int) -> tuple[Any, GeneratorMetadata, tuple]:
    """(the generator, its metadata, its exported parts: (mapping, synthesis, noise), or (None, None, ()))
    of version `version` of name, from client's registry (never the process's global MLflow URIs: a
    ``models:/`` download would use those). Only a pt2 generator without code and with its data inside its
    folder loads, checked before anything of it is imported or deserialised, and its parts the same way: a
    version is untrusted input (``trainers.safe_model``)."""
    import mlflow

    uri = ModelRef(name, version=version).uri  # what messages name
    tmp = tempfile.mkdtemp(prefix="ganray-model-")
    try:
        try:
            stored = client.get_model_version_download_uri(name, str(version))
            local = mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=tmp,
                                                        tracking_uri=client.tracking_uri)
            generator = load_checked(local, uri, lambda d: mlflow.pytorch.load_model(d, map_location="cpu"))
            meta = read_metadata(mlflow.models.Model.load(local).metadata, uri)
            parts = load_exports(local, meta.exports, uri, _load_archive) if meta.exports else (None, None, ())
        except (UnsafeModelError, MetadataError) as err:
            raise LoadError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - MLflow raises several kinds for a download that fails
            raise LoadError(f"cannot load {uri}: {type(err).__name__}: {_short(err)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return generator, meta, parts


def _load_archive(path) -> Any:
    """One exported part's pt2 archive as a module, after MLflow's own check that it holds no pickle record
    beyond what torch's weights_only loader accepts (the check MLflow runs on a version's model.pt2)."""
    import torch
    from mlflow.pytorch import _validate_pt2_archive_is_pickle_free

    _validate_pt2_archive_is_pickle_free(str(path))
    return torch.export.load(str(path)).module()


def _short(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."
