"""The layout of a job's storage folder: what each name in ``<checkpoint storage>/<job name>`` is.

Ray Train writes one folder per checkpoint, named by the workers: ``checkpoint_<step, 9 digits>``,
with a generation suffix (``checkpoint_000000012-1``) for the checkpoints written after a resume
fell back past newer ones. Beside them Ray Train keeps its own record of them
(``checkpoint_manager_snapshot.json``, its ``.validate_storage_marker``), and registration keeps a
copy of each evaluated or registered checkpoint in ``evaluated/<run id>/<checkpoint name>`` (where
``checkpoint.keep`` never deletes it; copies made before run folders existed are ``evaluated/<checkpoint
name>``). Those are the job's entries; any other file or folder there is someone else's.
Names only: no filesystem is touched here.
"""
from __future__ import annotations

import re

KEPT_FOLDER = "evaluated"
RAY_RUN_FILES = ("checkpoint_manager_snapshot.json", ".validate_storage_marker")
_NAME = re.compile(r"checkpoint_(\d{9,})(?:-(\d+))?$")


def checkpoint_name(step: int, generation: int = 0) -> str:
    """The folder name of the checkpoint written at step (sorts by step). generation > 0 marks the
    checkpoints written after a resume fell back past newer ones, so that none lands in their folders."""
    return f"checkpoint_{step:09d}" + (f"-{generation}" if generation else "")


def parse_checkpoint_name(path: str) -> tuple[int, int] | None:
    """(step, generation) of a checkpoint folder name or any path or URL ending in one; None otherwise."""
    match = _NAME.search(str(path).rstrip("/"))
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def checkpoint_step(path: str) -> int:
    """The step of a checkpoint from its folder name or any path or URL ending in it."""
    parsed = parse_checkpoint_name(path)
    if parsed is None:
        raise ValueError(f"{path!r} is not a checkpoint folder (checkpoint_NNNNNNNNN)")
    return parsed[0]


def kept_copy_path(checkpoint_path: str, run_id: str) -> str:
    """Where the kept copy of a checkpoint (one that is or may be registered) goes:
    ``<job folder>/evaluated/<run id>/<checkpoint name>``, so that a ``--fresh`` run of the same job, whose
    checkpoints have the same names, never writes into the copy behind an older run's version."""
    parent, name = checkpoint_path.rstrip("/").rsplit("/", 1)
    return f"{parent}/{KEPT_FOLDER}/{run_id}/{name}"


def is_kept_copy(path: str) -> bool:
    """Whether a checkpoint path or URI names a kept copy (under ``evaluated/``), not Ray Train's own."""
    return f"/{KEPT_FOLDER}/" in path and parse_checkpoint_name(path) is not None


def is_job_entry(name: str, is_folder: bool) -> bool:
    """Whether an entry of the job's storage folder (its base name) is the job's: a checkpoint folder or
    one of Ray Train's files about them (what ``--fresh`` deletes)."""
    return parse_checkpoint_name(name) is not None if is_folder else name in RAY_RUN_FILES
