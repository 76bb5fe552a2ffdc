"""Deleting a registered version, and the checkpoint copy the registry kept for it.

Every version keeps the training checkpoint it was registered from (``evaluated/<run id>/...``
in its job's storage; what ``model.init_from`` starts a fine-tune from) for as long as the
version exists. ``ganray models delete`` removes both: a version an alias points at is refused
(move or drop the alias first), the version goes first, then its copy, unless another version
(a ``promote --copy-to`` copy) still names the same checkpoint. Ray Train's own checkpoints,
which a version registered before copies were kept may name, are never deleted here.
"""
from __future__ import annotations

from typing import Any

from trainers.checkpoints.layout import is_kept_copy
from trainers.errors import GanrayError
from trainers.model_ref import ModelRef


class VersionDeleteError(GanrayError, RuntimeError):
    """A version that cannot be deleted as asked; the message says why and what to do."""


def delete_version(client, ref: ModelRef) -> dict[str, Any]:
    """Deletes the version ref names and its kept checkpoint; returns what happened (model, version,
    checkpoint, checkpoint_deleted, kept_for: the versions still naming the checkpoint)."""
    from deploy.loader import named_version, registered_model
    from orchestrator.registry.versions import CHECKPOINT_VERSION_TAG

    mv = named_version(client, ref)
    holding = sorted(a for a, v in registered_model(client, mv.name).aliases.items() if str(v) == str(mv.version))
    if holding:
        raise VersionDeleteError(f"{mv.name} version {mv.version} holds the alias(es) {', '.join(holding)}: move "
                                 f"them (ganray promote / rollback) before deleting it")
    checkpoint = (mv.tags or {}).get(CHECKPOINT_VERSION_TAG)
    sharing = _others_naming(client, mv, checkpoint) if checkpoint else []
    client.delete_model_version(mv.name, str(mv.version))
    deleted = bool(checkpoint) and is_kept_copy(checkpoint) and not sharing
    if deleted:
        _delete_copy(checkpoint, mv)
    return {"model": mv.name, "version": int(mv.version), "checkpoint": checkpoint,
            "checkpoint_deleted": deleted, "kept_for": sharing}


def _others_naming(client, mv, checkpoint: str) -> list[str]:
    """The other versions (of any model: copies keep the run) whose checkpoint is this one."""
    from orchestrator.registry.versions import CHECKPOINT_VERSION_TAG

    found = client.search_model_versions(f"run_id='{mv.run_id}'") if mv.run_id else []
    return sorted(f"{v.name}/{v.version}" for v in found if (v.tags or {}).get(CHECKPOINT_VERSION_TAG) == checkpoint
                  and (v.name, str(v.version)) != (mv.name, str(mv.version)))


def _delete_copy(checkpoint: str, mv) -> None:
    from trainers.checkpoints.deletion import delete_checkpoint
    from trainers.checkpoints.storage import open_storage

    try:
        delete_checkpoint(*open_storage(checkpoint))
    except OSError as err:
        raise VersionDeleteError(f"{mv.name} version {mv.version} is deleted, but its checkpoint copy {checkpoint} "
                                 f"is not: {type(err).__name__}: {err}; delete that folder by hand") from None
