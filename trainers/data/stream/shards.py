"""Fetching shards: retries with backoff, verification against the manifest, a bounded local cache.

A shard is read whole (one GET) and checked against the manifest's size and
sha256; reading stops one byte past the manifest's size, and an object larger
than that fails at once (``ShardTooLarge``), so a planted object costs no more
memory than an honest one. Transient faults (5xx, SlowDown, resets,
timeouts, a short or altered body) are retried with exponential backoff and
jitter; a missing shard fails at once, and one that stays wrong fails with an
error naming it.
"""
from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from trainers.cache_paths import CachePathError, under_root
from trainers.data.errors import DataError
from trainers.data.manifest import Manifest, ShardInfo
from trainers.data.stream.signed_get import NotForSignedGet, ShardTooLarge, SignedGetter, redact, usable
from trainers.data.storage import open_filesystem, storage_options_for


class LocalCache:
    """A folder of verified shards bounded in bytes, least recently used evicted first.

    Safe to share between processes on one machine (writes are atomic renames);
    a file that does not match the manifest is dropped and fetched again. Every
    path is checked to lie inside the cache folder (``under_root``) before it is
    read, written or deleted: CachePathError otherwise.
    """

    def __init__(self, root: str | Path, max_bytes: int):
        self.root, self.max_bytes = Path(root), int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, dataset_hash: str, info: ShardInfo) -> Path:
        return under_root(self.root, dataset_hash[:32], info.path)

    def get(self, dataset_hash: str, info: ShardInfo) -> bytes | None:
        path = self._path(dataset_hash, info)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) != info.bytes or hashlib.sha256(data).hexdigest() != info.sha256:
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # LRU: the modification time is the last use
        except OSError:
            pass
        return data

    def put(self, dataset_hash: str, info: ShardInfo, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self._path(dataset_hash, info)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        with self._lock:
            self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        files = []
        for p in self.root.rglob("*"):
            try:
                if p.is_file() and not p.name.endswith(".tmp"):
                    st = p.stat()
                    files.append((st.st_mtime, st.st_size, p))
            except OSError:
                continue
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size

    def size(self) -> int:
        """Bytes held now."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


class ShardFetcher:
    """Reads the shards of one dataset; thread-safe; its storage client belongs to the process that made it."""

    def __init__(self, url: str, manifest: Manifest, storage_options: dict | None = None,
                 cache: LocalCache | None = None, attempts: int = 8, backoff_s: float = 0.1,
                 max_backoff_s: float = 5.0):
        self.url, self.manifest, self.cache = url, manifest, cache
        # Resolved once (environment, then the local stack's profile), for s3fs and signed GETs alike.
        self._storage_options = storage_options_for(url) if storage_options is None else storage_options
        self.attempts, self.backoff_s, self.max_backoff_s = attempts, backoff_s, max_backoff_s
        self._fs: Any = None
        self._fs_pid = -1
        self._signed = SignedGetter(self._storage_options) if usable(url, self._storage_options) else None
        self._lock = threading.Lock()
        self.retried = 0  # transient faults survived, for tests and reports

    def _filesystem(self):
        with self._lock:
            if self._fs is None or self._fs_pid != os.getpid():  # s3fs is not fork-safe: one per process
                self._fs, self._root = open_filesystem(self.url, self._storage_options)
                self._fs_pid = os.getpid()
            return self._fs, self._root.rstrip("/")

    def _get(self, info: ShardInfo) -> bytes:
        """One GET of the shard, read no further than one byte past the manifest's size: signed and through
        urllib3 where that works, else through fsspec (a ranged read). ShardTooLarge past that byte."""
        fs, root = self._filesystem()
        if self._signed is not None:
            try:
                return self._signed.get(f"{root}/{info.path}", limit=info.bytes)
            except NotForSignedGet:
                self._signed = None  # a redirect or a refused signature: s3fs knows what to do
        data = fs.cat_file(f"{root}/{info.path}", start=0, end=info.bytes + 1)
        if len(data) > info.bytes:
            raise ShardTooLarge(f"it has more than {info.bytes} bytes (reading stopped at byte {len(data)})")
        return data

    def _download(self, info: ShardInfo) -> bytes:
        """The shard's bytes; transport faults retried up to `attempts` times, wrong content 3 times."""
        where = f"shard {info.path} of {self.url}"
        last, wrong = "", 0
        for attempt in range(self.attempts):
            if attempt:
                self.retried += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random()))
            try:
                data = self._get(info)
            except FileNotFoundError:
                raise DataError(f"{where} is missing") from None
            except PermissionError as err:
                raise DataError(f"{where} cannot be read: access denied ({err})") from None
            except ShardTooLarge as err:  # no transport adds bytes: not retried
                raise DataError(f"{where} is larger than the manifest says: {err}, the manifest says "
                                f"{info.bytes} bytes") from None
            except Exception as err:  # noqa: BLE001 - transport faults come in many types
                last = redact(f"{type(err).__name__}: {err}")
                continue
            if len(data) != info.bytes:
                last = f"it has {len(data)} bytes, the manifest says {info.bytes}"
            else:
                digest = hashlib.sha256(data).hexdigest()
                if digest == info.sha256:
                    return data
                last = f"its sha256 {digest[:16]}... differs from the manifest's {info.sha256[:16]}..."
            wrong += 1
            if wrong >= 3:
                raise DataError(f"{where} is corrupt: {last}")
        raise DataError(f"{where} could not be read after {self.attempts} attempts: {last}")

    def fetch(self, index: int) -> bytes:
        """The bytes of the shard at manifest position index, verified against the manifest."""
        info = self.manifest.shards[index]
        try:
            data = self.cache.get(self.manifest.dataset_hash, info) if self.cache else None
            if data is None:
                data = self._download(info)
                if self.cache:
                    try:
                        self.cache.put(self.manifest.dataset_hash, info, data)
                    except OSError:
                        pass  # a full or read-only cache disk costs speed, not correctness
        except CachePathError as err:
            raise DataError(f"shard {info.path} of {self.url}: {err}") from None
        return data
