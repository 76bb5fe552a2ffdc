"""Copies of a checkpoint folder: a local one to read, and the kept copy of an evaluated checkpoint.

:func:`local_copy` is the one way a process gets a stored checkpoint onto its own disk (a worker
resuming, the driver finishing, the registry registering): the folder itself on a local
filesystem, else a download into a temporary folder (named after this process, swept if it dies)
removed afterwards. :func:`keep_copy` copies a checkpoint that is (or may be) registered inside its
storage into ``evaluated/<run id>/`` (``layout.kept_copy_path``), where Ray Train's ``checkpoint.keep``
never deletes it: the registry keeps one per version, for as long as the version exists.
"""
from __future__ import annotations

import contextlib
import shutil
from typing import Iterator

from trainers import tempdirs
from trainers.checkpoints.layout import kept_copy_path


@contextlib.contextmanager
def local_copy(fs, path: str) -> Iterator[str]:
    """A checkpoint folder of a pyarrow filesystem on this machine: the path itself on a local filesystem,
    else a download removed afterwards."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    tmp = tempdirs.make("ganray-ckpt-")
    try:
        pafs.copy_files(path.rstrip("/"), tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def keep_copy(fs, checkpoint_path: str, run_id: str) -> str:
    """Copies a checkpoint folder of run run_id to its kept place inside the same pyarrow filesystem
    (server-side on S3), file by file; returns the copy's path."""
    import pyarrow.fs as pafs

    src, dst = checkpoint_path.rstrip("/"), kept_copy_path(checkpoint_path, run_id)
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            target = f"{dst}/{info.path[len(src):].lstrip('/')}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            fs.copy_file(info.path, target)
    return dst
