"""Where a job's checkpoints live: the spec's ``checkpoint.storage`` or the stack's, as Ray Train wants it."""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlparse

from trainers import settings, tempdirs
from trainers.data.storage import open_filesystem
from trainers.errors import GanrayError


class StorageError(GanrayError, RuntimeError):
    """Checkpoint storage that is not set or cannot be reached."""


@dataclass
class Storage:
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
    """A URL for a checkpoint path inside the storage filesystem."""
    if "://" in storage_url:
        scheme = storage_url.split("://", 1)[0]
        return f"{scheme}://{checkpoint_path.lstrip('/')}"
    return checkpoint_path


@contextlib.contextmanager
def local_checkpoint(uri: str) -> Iterator[str]:
    """A checkpoint folder on this machine: the path itself, or a temporary download removed afterwards."""
    if "://" not in uri or uri.startswith("file://"):
        yield uri.removeprefix("file://")
        return
    tmp = tempdirs.make("ganray-ckpt-")
    try:
        fs, path = open_filesystem(uri)
        fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
