"""Job records under ``$GANRAY_HOME/jobs``: state, step, last checkpoint; one driver per name."""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from trainers.errors import GanrayError
from trainers.settings import ganray_home


class JobBusyError(GanrayError, RuntimeError):
    """Another driver is running the same job name."""


def jobs_dir() -> Path:
    d = ganray_home() / "jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def read_record(name: str) -> dict[str, Any] | None:
    try:
        return json.loads((jobs_dir() / f"{name}.json").read_text())
    except FileNotFoundError:
        return None


def write_record(name: str, **fields: Any) -> dict[str, Any]:
    """Merges fields into the job's record (atomically) and returns it."""
    rec = read_record(name) or {"name": name}
    rec.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    path = jobs_dir() / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, path)
    return rec


def list_records() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(jobs_dir().glob("*.json"))]


class JobLock:
    """An exclusive, process-held lock on a job name (released when the process ends)."""

    def __init__(self, name: str):
        self.path = jobs_dir() / f"{name}.lock"
        self.name = name
        self._fh = None

    def __enter__(self) -> "JobLock":
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "?"
            self._fh.close()
            raise JobBusyError(f"job {self.name!r} is already being run by another driver (pid {holder})") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._fh:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
