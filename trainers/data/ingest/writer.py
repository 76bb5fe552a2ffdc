"""Writes processed samples into WebDataset tar shards inside one version folder of a destination."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from trainers.data.ingest.labels import Label
from trainers.data.ingest.versions import Destination
from trainers.data.manifest import Manifest, ShardInfo, content_hash, tag_set_key, top_tag_sets


def key_for(rel: str, used: set[str]) -> str:
    """The sample key of source file rel: its path without suffix, made safe, unique among used."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", str(Path(rel).with_suffix("")))
    base, n = key, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


@dataclass
class Written:
    """What the manifest needs of the samples written, in order: shards, tag and tag-set counts, and per
    sample its (key, image digest, label text) for the dataset hash and the shard that holds it."""

    shards: list[ShardInfo] = field(default_factory=list)
    tags: dict[str, int] = field(default_factory=dict)
    tag_sets: dict[str, int] = field(default_factory=dict)
    hash_items: list[tuple[str, str, str]] = field(default_factory=list)
    sample_shards: list[int] = field(default_factory=list)

    def count(self, key: str, digest: str, tags: list[str], caption: str | None) -> None:
        """One sample written into the shard being filled (number len(shards))."""
        for t in tags:
            self.tags[t] = self.tags.get(t, 0) + 1
        if tags:
            combo = tag_set_key(tags)
            self.tag_sets[combo] = self.tag_sets.get(combo, 0) + 1
        self.hash_items.append((key, digest, json.dumps(tags) + str(caption)))
        self.sample_shards.append(len(self.shards))

    def extend(self, other: "Written") -> None:
        """other's samples and shards after these (a --ray task's part after the parts before it)."""
        self.sample_shards += [len(self.shards) + s for s in other.sample_shards]
        self.shards += other.shards
        self.hash_items += other.hash_items
        for mine, theirs in ((self.tags, other.tags), (self.tag_sets, other.tag_sets)):
            for name, n in theirs.items():
                mine[name] = mine.get(name, 0) + n

    def rekey(self, keys: list[str], dest: Destination) -> None:
        """Gives the samples these keys (in order), rewriting each shard in which a key changes."""
        renames: dict[int, dict[str, str]] = {}
        for i, ((key, digest, text), shard, new) in enumerate(zip(self.hash_items, self.sample_shards, keys)):
            if new != key:
                renames.setdefault(shard, {})[key] = new
                self.hash_items[i] = (new, digest, text)
        for shard, mapping in renames.items():
            self.shards[shard] = rekey_shard(dest, self.shards[shard], mapping)

    def manifest(self, resolution: int, fmt: str) -> Manifest:
        """The manifest of these samples (not yet published)."""
        return Manifest(num_samples=sum(s.samples for s in self.shards), resolution=resolution, image_format=fmt,
                        shards=self.shards, tags=dict(sorted(self.tags.items())),
                        dataset_hash=content_hash(self.hash_items, resolution), tag_sets=top_tag_sets(self.tag_sets))


def join_parts(parts: Iterable[tuple[list[int], Written]], names: list[str], dest: Destination) -> Written:
    """Parts written apart, in candidate order, as one: each part is (the indices into names of the samples it
    wrote, in order; its Written). Every sample gets the key one ShardWriter over all of them gives (a key
    made unique within a part may collide with another part's), and a shard whose keys change is rewritten."""
    joined, used = Written(), set()
    for accepted, part in parts:
        part.rekey([key_for(names[index], used) for index in accepted], dest)
        joined.extend(part)
    return joined


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def rekey_shard(dest: Destination, info: ShardInfo, mapping: dict[str, str]) -> ShardInfo:
    """Rewrites a shard with some sample keys renamed (members `<key>.<ext>`); the same bytes otherwise."""
    raw = dest.fs.cat_file(dest.path(info.path))
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member in src.getmembers():
            key, ext = member.name.split(".", 1)
            _tar_member(tar, f"{mapping.get(key, key)}.{ext}", src.extractfile(member).read())
    data = out.getvalue()
    with dest.fs.open(dest.path(info.path), "wb") as fh:
        fh.write(data)
    return ShardInfo(info.path, info.samples, len(data), hashlib.sha256(data).hexdigest())


class ShardWriter:
    """Samples -> tar shards of about shard_mb in DEST/<version>/; keeps what the manifest needs (``written``).

    Memory stays bounded by one shard. The heartbeat of the version is refreshed as shards go out.
    """

    def __init__(self, dest: Destination, version: str, fmt: str, shard_mb: float):
        self.dest, self.version = dest, version
        self.fmt, self.limit = fmt, max(1, int(shard_mb * 1024 * 1024))
        self.written = Written()
        self.used: set[str] = set()
        self._new()

    def _new(self) -> None:
        self.buf, self.count = io.BytesIO(), 0
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, rel: str, data: bytes, label: Label | None) -> None:
        key = key_for(rel, self.used)
        meta = {"tags": label.tags if label else [], "caption": label.caption if label else None, "source": rel}
        _tar_member(self.tar, f"{key}.{self.fmt}", data)
        _tar_member(self.tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self.count += 1
        self.written.count(key, hashlib.sha256(data).hexdigest(), meta["tags"], meta["caption"])
        if self.buf.tell() >= self.limit:
            self.flush()
        self.dest.beat(self.version)

    def flush(self) -> None:
        if not self.count:
            return
        self.tar.close()
        data = self.buf.getvalue()
        path = f"{self.version}/shard-{len(self.written.shards):06d}.tar"
        with self.dest.fs.open(self.dest.path(path), "wb") as fh:
            fh.write(data)
        self.written.shards.append(ShardInfo(path, self.count, len(data), hashlib.sha256(data).hexdigest()))
        self._new()

    def manifest(self, resolution: int) -> Manifest:
        """Writes the last shard; the manifest of what was written (not yet published)."""
        self.flush()
        return self.written.manifest(resolution, self.fmt)
