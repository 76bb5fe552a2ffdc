"""Temporary folders named after their owner process, and the sweep of those whose owner is gone.

A worker that is killed while writing a checkpoint, or a Train controller that goes away
with sample grids still waiting for MLflow, cannot remove its folder in ``finally``. So
every such folder carries its owner's PID (``ganray-ckpt-<pid>-XXXXXXXX``), and the first
folder a process makes sweeps the system temp dir of folders of ours whose owner is no
longer alive (or whose PID now belongs to a process younger than the folder). Folders of
the old naming, without a PID, are swept once they are older than :data:`LEGACY_AGE_S`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("ganray.tempdirs")

PREFIXES = ("ganray-ckpt-", "ganray-grid-")
LEGACY_AGE_S = 6 * 3600.0
_OURS = re.compile(r"^ganray-(?:ckpt|grid)-(\d+)-[a-z0-9_]+$")
_LEGACY = re.compile(r"^ganray-(?:ckpt|grid)-[a-z0-9_]{8}$")
_swept_in: set[int] = set()  # PIDs of processes (this one after a fork) that swept already


def make(prefix: str, root: str | None = None) -> str:
    """A new private folder ``<prefix><pid>-XXXXXXXX`` in root (the system temp dir); the first call
    in a process sweeps stale folders first."""
    if os.getpid() not in _swept_in:
        _swept_in.add(os.getpid())
        try:
            sweep_stale(root)
        except OSError as err:  # a sweep is housekeeping, never a failure
            log.warning("could not sweep stale temp folders: %s", err)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root)


def sweep_stale(root: str | None = None, now: float | None = None) -> list[str]:
    """Removes this user's ganray temp folders in root whose owner process is gone; returns their paths."""
    root_path = Path(root or tempfile.gettempdir())
    now = time.time() if now is None else now
    removed = []
    for entry in root_path.iterdir():
        if not entry.name.startswith(PREFIXES):
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if st.st_uid != os.getuid() or not entry.is_dir() or entry.is_symlink():
            continue
        if _stale(entry.name, st.st_mtime, now):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    if removed:
        log.info("removed %d stale temp folder(s) of processes that are gone", len(removed))
    return removed


def _stale(name: str, mtime: float, now: float) -> bool:
    m = _OURS.match(name)
    if m:
        return not owner_alive(int(m.group(1)), mtime)
    return bool(_LEGACY.match(name)) and now - mtime > LEGACY_AGE_S


def owner_alive(pid: int, created: float) -> bool:
    """Whether pid is a live process (not a zombie) that started before a folder made at ``created``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return True  # no /proc: trust the PID
    if fields[0] in ("Z", "X"):
        return False
    started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started <= created + 1.0  # a PID reused by a younger process does not own the folder


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0
