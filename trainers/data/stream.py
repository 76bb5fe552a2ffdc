"""ShardStream: each rank's part of a sharded dataset, resumable on any world size.

The order: epoch e is a permutation of the global sample indices seeded by
(seed, e). The stream's state is the GLOBAL position in that permutation
(``consumed``); rank r of w yields ``perm[consumed + r + k*w]`` for
k = 0, 1, ... while a whole round of w samples remains, so ranks get disjoint,
equal-length slices and the last ``(N - consumed) mod w`` samples of an epoch
are dropped. Since ranks advance in lockstep, any rank's state is the global
state, and it restores every rank on any world size.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np
from PIL import Image

from trainers.data.manifest import MANIFEST_NAME, Manifest
from trainers.data.storage import open_filesystem


class DataError(RuntimeError):
    """A dataset that cannot be read; the message names the shard or manifest."""


def read_manifest(url: str, storage_options: dict | None = None) -> Manifest:
    """Reads and validates url/manifest.json; a clear error when it is missing."""
    fs, root = open_filesystem(url, storage_options)
    path = f"{root.rstrip('/')}/{MANIFEST_NAME}"
    try:
        text = fs.cat_file(path).decode()
    except FileNotFoundError:
        raise DataError(f"no dataset at {url}: {MANIFEST_NAME} not found (run `ganray data ingest` first)") from None
    except Exception as err:  # noqa: BLE001
        raise DataError(f"cannot read {url}/{MANIFEST_NAME}: {type(err).__name__}: {err}") from None
    try:
        return Manifest.from_json(text, where=f"{url}/{MANIFEST_NAME}")
    except ValueError as err:
        raise DataError(str(err)) from None


def parse_shard(data: bytes, name: str) -> list[tuple[str, bytes, dict]]:
    """(key, image bytes, metadata) per sample of a WebDataset tar, in tar order."""
    samples: dict[str, dict[str, Any]] = OrderedDict()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                fh = tar.extractfile(member)
                samples.setdefault(key, {})[ext] = fh.read() if fh else b""
    except tarfile.TarError as err:
        raise DataError(f"shard {name} is corrupt: {err}") from None
    out = []
    for key, parts in samples.items():
        img = parts.get("png") or parts.get("jpg") or parts.get("jpeg")
        if img is None:
            raise DataError(f"shard {name}: sample {key} has no image")
        meta = json.loads(parts["json"]) if "json" in parts else {}
        out.append((key, img, meta))
    return out


def decode_image(data: bytes) -> np.ndarray:
    """uint8 HxWx3 array of an encoded image."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


class ShardStream:
    """This rank's samples of the dataset at url, in the seeded global order."""

    def __init__(self, url: str, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 storage_options: dict | None = None, cache_bytes: int = 1 << 30):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.url, self.rank, self.world_size = url, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self._storage_options = storage_options
        self.manifest = read_manifest(url, storage_options)
        self.num_samples = self.manifest.num_samples
        self._starts = np.cumsum([0] + [s.samples for s in self.manifest.shards])
        self.epoch, self.consumed = 0, 0
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_bytes, self._cached = cache_bytes, 0
        self._fs = None

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    # -- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_samples": self.num_samples, "dataset_hash": self.manifest.dataset_hash}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dataset_hash") not in (None, self.manifest.dataset_hash):
            raise DataError(f"stream state belongs to another dataset (hash {state['dataset_hash']}, "
                            f"{self.url} has {self.manifest.dataset_hash})")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    # -- order -----------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.num_samples - self.consumed < self.world_size:  # the epoch was used up
            self.epoch, self.consumed = self.epoch + 1, 0
        perm = self.permutation(self.epoch)
        w, start = self.world_size, self.consumed
        rounds = (self.num_samples - start) // w
        for k in range(rounds):
            sample = self._sample(int(perm[start + k * w + self.rank]))
            self.consumed = start + (k + 1) * w
            yield sample

    # -- reading ---------------------------------------------------------
    def _sample(self, index: int) -> dict[str, Any]:
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        key, img, meta = self._shard(shard)[index - self._starts[shard]]
        return {"key": key, "image": decode_image(img), "tags": list(meta.get("tags", [])),
                "caption": meta.get("caption")}

    def _shard(self, i: int) -> list:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        info = self.manifest.shards[i]
        if self._fs is None:  # created lazily, inside the process that reads (s3fs is not fork-safe)
            self._fs, self._root = open_filesystem(self.url, self._storage_options)
        try:
            data = self._fs.cat_file(f"{self._root.rstrip('/')}/{info.path}")
        except FileNotFoundError:
            raise DataError(f"shard {info.path} of {self.url} is missing") from None
        if len(data) != info.bytes:
            raise DataError(f"shard {info.path} of {self.url} has {len(data)} bytes, manifest says {info.bytes}")
        samples = parse_shard(data, info.path)
        if len(samples) != info.samples:
            raise DataError(f"shard {info.path} has {len(samples)} samples, manifest says {info.samples}")
        self._cache[i] = samples
        self._cached += len(data)
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= sum(len(s[1]) for s in old)
        return samples


def batches(stream: ShardStream, batch_size: int) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """Endless (uint8 NxHxWx3 images, sample dicts) batches, rolling over epochs.

    A batch may span two epochs; between batches, stream.state_dict() is exact.
    """
    buf: list[dict] = []
    while True:
        got = 0
        for sample in stream:
            buf.append(sample)
            got += 1
            if len(buf) == batch_size:
                yield np.stack([s["image"] for s in buf]), buf
                buf = []
        if got == 0:
            raise DataError(f"{stream.url} yields no samples for rank {stream.rank} of {stream.world_size}")
