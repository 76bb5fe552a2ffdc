"""The one reader of the spec a stored checkpoint was written under.

Rank 0's index (``index_rank_0.json``) holds it as JSON, readable without torch; a checkpoint from
before indexes has it only in ``state.pt``, loaded safely (weights only). The driver reads it in the
storage before any worker starts (a changed spec is refused unless ``--fresh``); resume reads it
from the local copy of the checkpoint it chose. How two specs differ is said by
``trainers.spec.spec_difference``.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from trainers import tempdirs
from trainers.checkpoints.format import STATE_FILE, CheckpointError, index_file, load_state
from trainers.checkpoints.listing import list_checkpoints

log = logging.getLogger("ganray.checkpoints")


def _exists(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.File


def _spec_in_state(fs, path: str) -> dict[str, Any] | None:
    """The spec in a checkpoint's state.pt, loaded safely (where it is, or from a temporary download)."""
    import pyarrow.fs as pafs

    if not _exists(fs, f"{path}/{STATE_FILE}"):
        raise CheckpointError(f"checkpoint {path} has no {STATE_FILE}")
    if isinstance(fs, pafs.LocalFileSystem):
        return load_state(path).get("spec")
    tmp = tempdirs.make("ganray-ckpt-")
    try:
        pafs.copy_files(f"{path}/{STATE_FILE}", str(Path(tmp) / STATE_FILE), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return load_state(tmp).get("spec")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_spec(fs, path: str) -> dict[str, Any] | None:
    """The spec (a dict, as it was written) of the checkpoint folder at path in a pyarrow filesystem, None
    when it holds none; CheckpointError when it cannot be read."""
    index = f"{path}/{index_file(0)}"
    if not _exists(fs, index):
        return _spec_in_state(fs, path)
    try:
        with fs.open_input_stream(index) as f:
            return json.loads(f.read()).get("spec")
    except (ValueError, AttributeError):
        raise CheckpointError(f"checkpoint {path}: {index_file(0)} is unreadable") from None


def newest_spec(fs, run_path: str) -> tuple[str, dict[str, Any] | None] | None:
    """(checkpoint path, the spec it was written under) of the newest checkpoint under run_path whose spec
    can be read; None when there is no checkpoint. Unreadable ones are passed over with a warning (and the
    newest is named with None when none can be read)."""
    stored = list_checkpoints(fs, run_path)
    for s in stored:
        try:
            return s.path, read_spec(fs, s.path)
        except CheckpointError as err:
            log.warning("ganray: %s", err)
    return (stored[0].path, None) if stored else None
