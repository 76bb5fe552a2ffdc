"""The one listing of a job's storage folder: its checkpoints, newest first, and everything else in it.

Both sides list through pyarrow's filesystem API: a worker with the filesystem Ray Train hands it
(resume), the driver with :func:`trainers.checkpoints.storage.open_storage` (the spec check before
any worker starts, ``--fresh``). A folder that does not exist lists as empty; a storage that cannot
be read raises OSError (never taken for an empty one).
"""
from __future__ import annotations

from dataclasses import dataclass

from trainers.checkpoints.layout import parse_checkpoint_name


@dataclass(frozen=True, order=True)
class Stored:
    """A checkpoint folder in a job's storage: (step, generation) orders them, oldest first."""

    step: int
    generation: int
    path: str


@dataclass(frozen=True)
class Entry:
    """One entry directly under a folder: its path in the filesystem, its base name, and whether it is a folder."""

    path: str
    name: str
    is_folder: bool


def list_folder(fs, folder: str) -> list[Entry]:
    """The entries directly under folder of a pyarrow filesystem ([] when it does not exist)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(folder.rstrip("/"), allow_not_found=True))
    paths = [(info.path.rstrip("/"), info.type == pafs.FileType.Directory) for info in infos
             if info.type in (pafs.FileType.Directory, pafs.FileType.File)]
    return [Entry(path, path.rsplit("/", 1)[-1], is_folder) for path, is_folder in paths]


def list_checkpoints(fs, run_path: str) -> list[Stored]:
    """The checkpoint folders directly under run_path (a job's storage folder), newest first."""
    found = [(parse_checkpoint_name(e.name), e.path) for e in list_folder(fs, run_path) if e.is_folder]
    return sorted((Stored(*parsed, path) for parsed, path in found if parsed), reverse=True)
