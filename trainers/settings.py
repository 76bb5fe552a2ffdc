"""Every ``GANRAY_*`` environment variable ganray reads: its name, meaning and default, in one place.

Code reads a variable through :func:`get` (or :func:`get_int`), never ``os.environ``
directly, so this table is the whole list (the README prints it; a test checks that no
other ``GANRAY_*`` name is read anywhere). Variables marked ``worker`` are read inside
Ray Train workers: the driver ships the ones set in its environment to the workers
through the job's runtime environment (:func:`worker_env`), so they work whatever the
Ray nodes were started with.

The rule "the environment first, then the local stack's profile" lives here too
(:func:`env_or_profile`), for endpoints that both sides resolve.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    default: str | None = None  # as a user would read it; None: unset means "off" / "none"
    worker: bool = False  # read inside Ray Train workers (shipped in the job's runtime env)


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("GANRAY_HOME", "folder of the embedded stack's state: its profile, credentials, MLflow store, "
             "storage, logs, job records and caches (each Ray node has its own)", "~/.ganray"),
    Variable("GANRAY_STORAGE_ROOT", "object storage root that checkpoint storage defaults to "
             "(`<root>/checkpoints`) when the spec sets none", "the stack's storage (a folder, or s3://ganray)"),
    Variable("GANRAY_FID_WEIGHTS", "local file of the Inception weights pt_inception-2015-12-05 for FID/KID/PR "
             "when the spec's eval.fid_weights is unset", "the downloaded copy", worker=True),
    Variable("GANRAY_FID_WEIGHTS_URL", "where the Inception weights are downloaded from when no file is named "
             "(once, into $GANRAY_CACHE_DIR/inception; the file name's -<hex>. prefix is the sha256 check)",
             "pytorch-fid's release, .../fid_weights/pt_inception-2015-12-05-6726825d.pth", worker=True),
    Variable("GANRAY_CACHE_DIR", "where real-image statistics, tag judges and the downloaded Inception weights "
             "are cached", "$GANRAY_HOME/cache", worker=True),
    Variable("GANRAY_DECODE_WORKERS", "decode processes per data stream (0: decode in threads)",
             "the cores this process may use", worker=True),
    Variable("GANRAY_DATA_CACHE", "folder of a bounded local cache of downloaded shards", None, worker=True),
    Variable("GANRAY_DATA_CACHE_MB", "size bound of that shard cache, in MiB", "10240", worker=True),
    Variable("GANRAY_S3_SIGNED_GET", "1: download S3 shards through presigned GETs; 0: always through s3fs",
             "1", worker=True),
    Variable("GANRAY_SAMPLE_LOG", "test hook: a folder where every worker logs the sample keys of each step",
             None, worker=True),
    Variable("GANRAY_DEMO_DIR", "output folder of `make demo`", "ganray-demo"),
)}


def _variable(name: str) -> Variable:
    try:
        return VARIABLES[name]
    except KeyError:
        raise KeyError(f"{name} is not a ganray setting; add it to trainers/settings.py VARIABLES") from None


def get(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value from the environment, or None when unset or empty (callers apply the default)."""
    _variable(name)
    value = (os.environ if environ is None else environ).get(name)
    return value or None


def get_int(name: str) -> int | None:
    """An integer setting; a value that is not an integer is an error naming the variable."""
    value = get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def ganray_home() -> Path:
    """The folder that holds all local-stack state (``GANRAY_HOME``, default ~/.ganray)."""
    return Path(get("GANRAY_HOME") or Path.home() / ".ganray").expanduser().resolve()


def worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker-side variables set in environ (default: this process's), for a job's runtime env."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name, v in VARIABLES.items() if v.worker and environ.get(name)}


def read_profile() -> dict[str, Any]:
    """The local stack's profile (endpoints, non-secret), or {} when no stack was set up."""
    try:
        return json.loads((ganray_home() / "profile.json").read_text())
    except FileNotFoundError:
        return {}


def env_or_profile(env_names: tuple[str, ...], profile_key: str, environ: Mapping[str, str] | None = None,
                   profile: Mapping[str, Any] | None = None) -> str | None:
    """The first of env_names set in the environment, else the local stack's profile value, else None."""
    environ = os.environ if environ is None else environ
    for name in env_names:
        if environ.get(name):
            return environ[name]
    profile = read_profile() if profile is None else profile
    return profile.get(profile_key) or None


def s3_region(environ: Mapping[str, str] | None = None) -> str | None:
    """The AWS region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; None lets the client resolve it."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
