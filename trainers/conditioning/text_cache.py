"""The caption-embedding table of a dataset: computed once per (dataset, encoder, pooling), cached next to
the data.

Where: ``DATA_URL/text-embeddings/<encoder>-<pooling>-<dataset hash>.npz``, beside the shards, so every
node and every job on the same dataset shares one computation, it lives exactly as long as
the dataset (ingest never touches other folders of DEST, and a re-ingest with other captions
has another hash), and it is found from any machine that reads the data; the name, dataset hash
included, stays inside both folders (``trainers.cache_paths.under_root``). When the data URL
cannot be written (a read-only bucket or folder), the table goes to this node's metrics
cache (``GANRAY_CACHE_DIR``) instead: only rank 0 reads the table and it hands it to the
other ranks, so a per-node copy is enough. Writes are atomic: a temp file renamed on a
local folder, one PUT on object storage. Reading takes captions from the shards' JSON only
(no image is decoded).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from trainers.conditioning import phrases
from trainers.data.captions import caption_lines
from trainers.errors import GanrayError

CACHE_FOLDER = "text-embeddings"
CACHE_VERSION = 2  # 2: the pooling is part of the table


class CaptionError(GanrayError, ValueError):
    """A dataset that cannot train a text model: samples without captions."""


@dataclass
class CaptionTable:
    """Sample keys in stored order; rows offsets[i]:offsets[i+1] of embeddings are sample i's caption lines."""

    keys: list[str]
    offsets: np.ndarray
    embeddings: np.ndarray
    encoder: str
    pooling: str
    dataset_hash: str

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(self.keys, dtype=str), offsets=self.offsets, embeddings=self.embeddings,
                 meta=np.array([self.encoder, self.pooling, self.dataset_hash, str(CACHE_VERSION)], dtype=str))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CaptionTable":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = [str(x) for x in z["meta"]]
            if meta[-1] != str(CACHE_VERSION):
                raise ValueError(f"cache version {meta[-1]}")
            name, pooling, dataset_hash, _ = meta
            return cls([str(k) for k in z["keys"]], z["offsets"].astype(np.int64),
                       z["embeddings"].astype(np.float32), name, pooling, dataset_hash)


def cache_name(encoder_name: str, pooling: str, dataset_hash: str) -> str:
    return f"{encoder_name}-{pooling}-{dataset_hash[:24]}.npz"


def _places(url: str, name: str) -> list[str]:
    """Beside the data, then in the node cache: the same path under CACHE_FOLDER in both, checked to lie
    inside the node cache's folder (CachePathError for a name that would leave it)."""
    from trainers.cache_paths import under_root
    from trainers.data.storage import join
    from trainers.metrics import cache_dir

    folder = cache_dir() / CACHE_FOLDER
    node = under_root(folder, name)
    return [join(url, CACHE_FOLDER, *node.relative_to(folder.resolve()).parts), str(node)]


def iter_captions(url: str, manifest) -> Iterator[tuple[str, str | None]]:
    """(key, caption) of every sample in stored order, from the shards' JSON members (no decoding)."""
    from trainers.data.stream.pipeline import index_shard
    from trainers.data.stream.shards import ShardFetcher

    fetcher = ShardFetcher(url, manifest)
    for i, info in enumerate(manifest.shards):
        keys, _, labels = index_shard(fetcher.fetch(i), info.path, info.samples, url)
        for key, (_, caption) in zip(keys, labels):
            yield key, caption


def compute_table(url: str, manifest, encoder_name: str, pooling: str) -> CaptionTable:
    """Encodes every caption line of the dataset; CaptionError when samples have no caption."""
    keys, lines, offsets, missing = [], [], [0], []
    for key, caption in iter_captions(url, manifest):
        got = caption_lines(caption)
        if not got:
            missing.append(key)
        keys.append(key)
        lines += got
        offsets.append(len(lines))
    if missing:
        raise CaptionError(f"model.conditioning=text but {len(missing)} of {len(keys)} samples of {url} have no "
                           f"caption (e.g. {missing[0]!r}); ingest with a labels file that has captions, or with "
                           "--compose-captions to compose them from the tags")
    return CaptionTable(keys, np.asarray(offsets, dtype=np.int64), phrases.embed(encoder_name, lines, pooling),
                        encoder_name, pooling, manifest.dataset_hash)


def _read(place: str) -> bytes | None:
    from trainers.data.storage import open_filesystem

    try:
        fs, path = open_filesystem(place)
        return fs.cat_file(path) if fs.exists(path) else None
    except Exception:  # noqa: BLE001 - unreadable is the same as absent: the table is computed again
        return None


def _write(place: str, data: bytes) -> None:
    if "://" not in place or place.startswith("file://"):
        path = Path(place.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    from trainers.data.storage import open_filesystem

    fs, path = open_filesystem(place)
    fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all


def load_or_compute(url: str, manifest, encoder_name: str, pooling: str) -> tuple[CaptionTable, str, bool]:
    """(table, where it is stored, whether it was computed now). Reads the first cache that holds a table
    of this dataset, encoder and pooling; else computes it and writes it next to the data, or to the node
    cache."""
    places = _places(url, cache_name(encoder_name, pooling, manifest.dataset_hash))
    for place in places:
        data = _read(place)
        if data is None:
            continue
        try:
            table = CaptionTable.from_bytes(data)
        except Exception:  # noqa: BLE001 - a damaged or older cache file is recomputed
            continue
        if (table.encoder, table.pooling, table.dataset_hash) == (encoder_name, pooling, manifest.dataset_hash):
            return table, place, False
    table = compute_table(url, manifest, encoder_name, pooling)
    data = table.to_bytes()
    for place in places:
        try:
            _write(place, data)
            return table, place, True
        except Exception:  # noqa: BLE001 - a read-only data URL: the node cache takes it
            continue
    return table, "(not cached: no writable place)", True
