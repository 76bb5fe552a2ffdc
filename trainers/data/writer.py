"""Writes processed samples into WebDataset tar shards inside one version folder of a destination."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

from trainers.data.labels import Label
from trainers.data.manifest import Manifest, ShardInfo, content_hash, tag_set_key, top_tag_sets
from trainers.data.versions import Destination


def key_for(rel: str, used: set[str]) -> str:
    """The sample key of source file rel: its path without suffix, made safe, unique among used."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", str(Path(rel).with_suffix("")))
    base, n = key, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


class ShardWriter:
    """Samples -> tar shards of about shard_mb in DEST/<version>/; keeps what the manifest needs.

    Memory stays bounded by one shard. The heartbeat of the version is refreshed as shards go out.
    """

    def __init__(self, dest: Destination, version: str, fmt: str, shard_mb: float):
        self.dest, self.version = dest, version
        self.fmt, self.limit = fmt, max(1, int(shard_mb * 1024 * 1024))
        self.shards: list[ShardInfo] = []
        self.tag_counts: dict[str, int] = {}
        self.tag_set_counts: dict[str, int] = {}
        self.hash_items: list[tuple[str, str, str]] = []
        self.used: set[str] = set()
        self._new()

    def _new(self) -> None:
        self.buf, self.count = io.BytesIO(), 0
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, rel: str, data: bytes, label: Label | None) -> None:
        key = key_for(rel, self.used)
        meta = {"tags": label.tags if label else [], "caption": label.caption if label else None, "source": rel}
        self._add(f"{key}.{self.fmt}", data)
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self.count += 1
        for t in meta["tags"]:
            self.tag_counts[t] = self.tag_counts.get(t, 0) + 1
        if meta["tags"]:
            combo = tag_set_key(meta["tags"])
            self.tag_set_counts[combo] = self.tag_set_counts.get(combo, 0) + 1
        self.hash_items.append((key, hashlib.sha256(data).hexdigest(), json.dumps(meta["tags"]) + str(meta["caption"])))
        if self.buf.tell() >= self.limit:
            self.flush()
        self.dest.beat(self.version)

    def flush(self) -> None:
        if not self.count:
            return
        self.tar.close()
        data = self.buf.getvalue()
        path = f"{self.version}/shard-{len(self.shards):06d}.tar"
        with self.dest.fs.open(self.dest.path(path), "wb") as fh:
            fh.write(data)
        self.shards.append(ShardInfo(path, self.count, len(data), hashlib.sha256(data).hexdigest()))
        self._new()

    def manifest(self, resolution: int) -> Manifest:
        """Writes the last shard; the manifest of what was written (not yet published)."""
        self.flush()
        return Manifest(num_samples=sum(s.samples for s in self.shards), resolution=resolution,
                        image_format=self.fmt, shards=self.shards, tags=dict(sorted(self.tag_counts.items())),
                        dataset_hash=content_hash(self.hash_items, resolution),
                        tag_sets=top_tag_sets(self.tag_set_counts))
