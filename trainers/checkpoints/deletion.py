"""Deleting checkpoints: exactly a job's own entries for ``--fresh``, or one copy no longer needed.

``--fresh`` deletes the job's checkpoint folders, the kept copies of evaluated ones (under
``evaluated/``) and Ray Train's files about them (``layout.is_job_entry``), never any other file;
a folder goes too when that leaves it empty. Deletion goes through the same pyarrow filesystem API
as the listing (``trainers.checkpoints.listing``).
"""
from __future__ import annotations

from trainers.checkpoints.layout import KEPT_FOLDER, is_job_entry
from trainers.checkpoints.listing import Entry, list_folder


def _is_folder(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.Directory


def _delete_in(fs, folder: str, entries: list[Entry]) -> list[str]:
    """Deletes the job's entries of one folder; the folder too when that leaves it empty."""
    gone = []
    for e in entries:
        if not is_job_entry(e.name, e.is_folder):
            continue
        if e.is_folder:
            fs.delete_dir(e.path)
        else:
            fs.delete_file(e.path)
        gone.append(e.path)
    if gone and not list_folder(fs, folder) and _is_folder(fs, folder):  # (on S3 an emptied folder is gone)
        try:
            fs.delete_dir(folder)
        except FileNotFoundError:
            pass
    return gone


def delete_job_checkpoints(fs, run_path: str) -> list[str]:
    """Deletes the job's checkpoint folders under run_path (a job's storage folder, in a pyarrow filesystem),
    the kept copies of evaluated ones and Ray Train's files about them; every other file stays (a folder
    too, unless it is left empty). Returns the paths deleted."""
    run_path = run_path.rstrip("/")
    entries = list_folder(fs, run_path)
    kept = [e for e in entries if e.is_folder and e.name == KEPT_FOLDER]
    gone = []
    for e in kept:
        gone += _delete_in(fs, e.path, list_folder(fs, e.path))
    return gone + _delete_in(fs, run_path, list_folder(fs, run_path) if kept else entries)


def delete_checkpoint(fs, path: str) -> None:
    """Deletes one checkpoint folder (a kept copy registration no longer needs); nothing when it is gone."""
    if _is_folder(fs, path):
        fs.delete_dir(path.rstrip("/"))
