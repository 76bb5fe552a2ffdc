"""Where a job's checkpoints live and how a process reaches them, as a pyarrow filesystem.

The storage is the spec's ``checkpoint.storage`` or ``<stack storage root>/checkpoints``; a job's
checkpoints are in ``<storage>/<job name>`` (Ray Train's ``RunConfig(name=job)``). Every reader of
stored checkpoints works on a pyarrow filesystem and a path in it: the workers and the Train
controller get theirs from Ray Train (``checkpoint.filesystem``, the one :func:`resolve_storage`
built for it); the driver and the registry open theirs from a URL with :func:`open_storage`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from trainers import settings
from trainers.data.storage import open_filesystem
from trainers.errors import GanrayError


class StorageError(GanrayError, RuntimeError):
    """Checkpoint storage that is not set or cannot be reached."""


@dataclass
class Storage:
    """A checkpoint storage as users name it and as Ray Train takes it (storage_path, storage_filesystem)."""

    url: str  # what users see: s3://bucket/prefix or a local path
    path: str  # what Ray Train gets as storage_path
    filesystem: Any  # pyarrow filesystem or None for local paths

    def run_url(self, name: str) -> str:
        """The folder of one job's checkpoints (Ray Train's RunConfig(name=job))."""
        return f"{self.url.rstrip('/')}/{name}"


def _s3_filesystem(bucket: str, endpoint: str | None):
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {}
    region = settings.s3_region()
    if region:
        kwargs["region"] = region
    if endpoint:
        ep = urlparse(endpoint)
        kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
    elif not region:
        try:  # AWS itself: ask where the bucket lives rather than assume us-east-1
            kwargs["region"] = pafs.resolve_s3_region(bucket)
        except (OSError, ValueError):
            pass
    return pafs.S3FileSystem(**kwargs)


def resolve_storage(spec_storage: str | None, storage_root: str | None, s3_endpoint: str | None) -> Storage:
    """The checkpoint storage of a job: the spec's URL, else ``<storage root>/checkpoints``."""
    url = spec_storage or (f"{storage_root.rstrip('/')}/checkpoints" if storage_root else None)
    if not url:
        raise StorageError("checkpoint.storage is not set and there is no local stack to default to "
                           "(`ganray local up`, or set checkpoint.storage)")
    parsed = urlparse(url)
    if parsed.scheme in ("s3", "s3a"):
        return Storage(url, f"{parsed.netloc}{parsed.path}".rstrip("/"), _s3_filesystem(parsed.netloc, s3_endpoint))
    if parsed.scheme in ("", "file"):
        return Storage(url, parsed.path if parsed.scheme else url, None)
    import pyarrow.fs as pafs

    fs, path = open_filesystem(url)
    return Storage(url, path, pafs.PyFileSystem(pafs.FSSpecHandler(fs)))


def checkpoint_uri(storage_url: str, checkpoint_path: str) -> str:
    """A URL for a checkpoint path inside the storage filesystem (what runs and versions record)."""
    if "://" in storage_url:
        scheme = storage_url.split("://", 1)[0]
        return f"{scheme}://{checkpoint_path.lstrip('/')}"
    return checkpoint_path


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def open_storage(url: str):
    """(pyarrow filesystem, path) of a checkpoint URL or local path, for a process that has a URL (the
    driver, the registry). Local paths get pyarrow's local filesystem (the path made absolute); any other
    URL the fsspec filesystem of ``trainers.data.storage.open_filesystem`` (its endpoint and the local
    stack's keys, as every other reader of storage finds them), seen through pyarrow's API."""
    import pyarrow.fs as pafs

    if _is_local(url):
        return pafs.LocalFileSystem(), os.path.abspath(url.removeprefix("file://"))
    fs, path = open_filesystem(url)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")
