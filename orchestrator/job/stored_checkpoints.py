"""A job's checkpoints in its storage folder, as the driver sees them before any worker starts.

The folder is ``<checkpoint storage>/<job name>`` (Ray Train's ``RunConfig(name=job)``). It may hold
checkpoints that no MLflow run records (the tracking server was replaced, the run was deleted):
the driver reads the spec the newest readable one was written under (its ``index_rank_0.json``, or
the safely loaded ``state.pt`` of a checkpoint from before indexes) and refuses a differing spec
unless ``--fresh``. ``--fresh`` deletes exactly the job's checkpoints there (the ``checkpoint_*``
folders) and Ray Train's record of them (``checkpoint_manager_snapshot.json``, its storage marker),
never any other file.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainers.checkpoint import STATE_FILE, CheckpointError, index_file, load_state, parse_checkpoint_name
from trainers.data.storage import open_filesystem

log = logging.getLogger(__name__)

RAY_RUN_FILES = ("checkpoint_manager_snapshot.json", ".validate_storage_marker")


def _listing(run_url: str):
    fs, root = open_filesystem(run_url)
    root = root.rstrip("/")
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return fs, root, []
    return fs, root, entries


def job_checkpoints(run_url: str) -> list[str]:
    """The paths (in the folder's filesystem) of the checkpoint folders under run_url, newest first."""
    fs, root, entries = _listing(run_url)
    found = [(parse_checkpoint_name(e["name"]), e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]
    return [name for parsed, name in sorted((f for f in found if f[0]), reverse=True)]


def _spec_of(fs, path: str) -> dict[str, Any] | None:
    """The spec a stored checkpoint was written under; CheckpointError when it cannot be read."""
    index = f"{path}/{index_file(0)}"
    if fs.exists(index):
        try:
            return json.loads(fs.cat_file(index)).get("spec")
        except (ValueError, AttributeError):
            raise CheckpointError(f"checkpoint {path}: {index_file(0)} is unreadable") from None
    tmp = tempfile.mkdtemp(prefix="ganray-spec-")
    try:
        fs.get(f"{path}/{STATE_FILE}", str(Path(tmp) / STATE_FILE))
        return load_state(tmp).get("spec")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {STATE_FILE}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def newest_spec(run_url: str) -> tuple[str, dict[str, Any] | None] | None:
    """(checkpoint path, the spec it was written under) of the newest checkpoint under run_url whose spec
    can be read; None when there is no checkpoint. Unreadable ones are passed over with a warning."""
    fs, _ = open_filesystem(run_url)
    paths = job_checkpoints(run_url)
    for path in paths:
        try:
            return path, _spec_of(fs, path)
        except CheckpointError as err:
            log.warning("ganray: %s", err)
    return (paths[0], None) if paths else None


def _is_ours(entry: dict[str, Any]) -> bool:
    base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
    if entry.get("type") == "directory":
        return parse_checkpoint_name(base) is not None
    return base in RAY_RUN_FILES


def _delete_in(fs, folder: str, entries: list[dict[str, Any]]) -> list[str]:
    """Deletes the job's entries of one folder; the folder too when that leaves it empty."""
    gone = []
    for e in entries:
        if _is_ours(e):
            fs.rm(e["name"].rstrip("/"), recursive=e.get("type") == "directory")
            gone.append(e["name"].rstrip("/"))
    if gone:
        try:
            if not fs.ls(folder):
                fs.rm(folder, recursive=True)
        except FileNotFoundError:
            pass
    return gone


def delete_job_checkpoints(run_url: str) -> list[str]:
    """Deletes the job's checkpoint folders under run_url (and the kept copies of evaluated ones, under
    ``evaluated/``) and Ray Train's files about them; every other file stays (a folder too, unless it is
    left empty). Returns what was deleted."""
    from orchestrator.registry.registrar import KEPT_FOLDER

    fs, root, entries = _listing(run_url)
    gone = []
    kept = [e for e in entries if e.get("type") == "directory" and e["name"].rstrip("/").endswith(f"/{KEPT_FOLDER}")]
    for e in kept:
        folder = e["name"].rstrip("/")
        gone += _delete_in(fs, folder, fs.ls(folder, detail=True))
    return gone + _delete_in(fs, root, fs.ls(root, detail=True) if kept else entries)
