"""The one rule for cache paths: a path built from untrusted parts lies under its cache folder.

Dataset hashes and shard paths come from a manifest, that is from whoever can write the
dataset's bucket. Every cache that puts them into a path (the shard cache under
``GANRAY_DATA_CACHE``, the FID statistics, the tag judges and the caption tables under
``GANRAY_CACHE_DIR``) builds that path with :func:`under_root`, which resolves it (links
included) and refuses one that is not strictly inside the resolved folder, before anything is
read, written or deleted there.
"""
from __future__ import annotations

from pathlib import Path

from trainers.errors import GanrayError


class CachePathError(GanrayError, ValueError):
    """A cache path that would leave its cache folder; the message names both."""


def under_root(root: str | Path, *parts: str) -> Path:
    """The resolved path root/parts..., which must lie strictly inside the resolved root.

    CachePathError otherwise: an absolute part, a `..` that climbs out, or a link inside root
    that points out of it.
    """
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or not path.is_relative_to(base):
        shown = "/".join(str(p) for p in parts)
        raise CachePathError(f"cache path {shown!r:.200} leaves the cache folder {base}")
    return path
