"""ShardStream: each rank's part of a sharded dataset, read ahead, resumable on any world size.

The order (see ``order.py``): epoch e permutes the shards with a generator
seeded by (seed, e), groups them into windows of ``window_mb`` and permutes the
samples within each window with (seed, e, window). That is the epoch's global
order, a permutation of all N samples. The stream's state is the GLOBAL
position ``consumed`` in it: rank r of w yields positions ``consumed + r + k*w``
for k = 0, 1, ... while a whole round of w samples remains, so ranks get
disjoint, equal-length slices, and the last ``(N - consumed) mod w`` samples of
an epoch (at most w - 1) are not read in that epoch. Ranks advance in lockstep,
so any rank's state is the global state and restores every rank on any world
size: the next epoch then begins for all as if nothing had happened.

Speed (``pipeline.py``): shards are fetched whole by a thread pool, the
current window plus ``readahead_mb`` ahead (default: the window size, at least
64 MB; across epoch ends too, so a dataset that fits in window + read-ahead
stays staged from one epoch to the next); decoding
runs in spawned processes (one per core by default) into shared memory, off
the consuming thread; ``state_dict()`` counts only samples handed out. An
optional local cache (``cache_dir``, bounded by ``cache_mb``, LRU) keeps
verified shards on disk and is shared by the ranks of a machine. Faults
(``shards.py``): retries with backoff; a missing or corrupt shard is an error
that names it; a corrupt sample (not a PNG or JPEG of the manifest's
resolution) is skipped, named in a warning and counted (``skipped.count``).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np

from trainers.data.manifest import MANIFEST_NAME, Manifest
from trainers.data.stream.order import EpochOrder
from trainers.data.stream.decode_pool import DecodePool, default_decode_workers
from trainers.data.stream.pipeline import IndexCache, Pipeline, SkippedSamples
from trainers.data.errors import DataError
from trainers.data.stream.shards import LocalCache, ShardFetcher
from trainers.data.storage import open_filesystem
from trainers import settings

__all__ = ["ShardStream", "batches", "read_manifest", "torch_batches"]


def read_manifest(url: str, storage_options: dict | None = None, attempts: int = 5) -> Manifest:
    """Reads and validates url/manifest.json (transient faults retried); a clear error when it is missing."""
    fs, root = open_filesystem(url, storage_options)
    path = f"{root.rstrip('/')}/{MANIFEST_NAME}"
    for attempt in range(attempts):
        try:
            text = fs.cat_file(path)
            break
        except FileNotFoundError:
            raise DataError(f"no dataset at {url}: {MANIFEST_NAME} not found (run `ganray data ingest` first)") from None
        except PermissionError as err:
            raise DataError(f"cannot read {url}/{MANIFEST_NAME}: access denied ({err})") from None
        except Exception as err:  # noqa: BLE001 - transport faults come in many types
            if attempt == attempts - 1:
                raise DataError(f"cannot read {url}/{MANIFEST_NAME}: {type(err).__name__}: {err}") from None
            time.sleep(0.2 * 2 ** attempt)
    try:
        return Manifest.from_json(text, where=f"{url}/{MANIFEST_NAME}")
    except ValueError as err:
        raise DataError(str(err)) from None


class ShardStream:
    """This rank's samples of the dataset at url, in the seeded global order (see the module docstring).

    ``window_mb``, ``seed`` and ``shuffle`` define the order and must be the same
    on every rank (they travel in the state). The rest only change speed:
    ``decode_workers`` (default: ``GANRAY_DECODE_WORKERS`` or the usable cores;
    0 decodes in threads), ``fetch_threads``, ``readahead_mb``, and the local
    cache ``cache_dir`` / ``cache_mb`` (default: ``GANRAY_DATA_CACHE`` /
    ``GANRAY_DATA_CACHE_MB`` or 10 GiB; no folder, no cache), and
    ``index_cache_samples``: shard indexes kept in memory across epochs.
    """

    def __init__(self, url: str, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 storage_options: dict | None = None, *, window_mb: float = 256, readahead_mb: float | None = None,
                 decode_workers: int | None = None, fetch_threads: int = 8, cache_dir: str | None = None,
                 cache_mb: float | None = None, chunk: int | None = None, index_cache_samples: int = 500_000):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.url, self.rank, self.world_size = str(url), rank, world_size
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.manifest = read_manifest(self.url, storage_options)
        self.num_samples = self.manifest.num_samples
        self.window_bytes = max(1, int(window_mb * (1 << 20)))
        self.order = EpochOrder([s.samples for s in self.manifest.shards], [s.bytes for s in self.manifest.shards],
                                self.seed, self.shuffle, self.window_bytes)
        cache_dir = cache_dir or settings.get("GANRAY_DATA_CACHE")
        cache_mb = cache_mb if cache_mb is not None else (settings.get_int("GANRAY_DATA_CACHE_MB") or 10 * 1024)
        self.cache = LocalCache(cache_dir, int(cache_mb * (1 << 20))) if cache_dir else None
        self.fetcher = ShardFetcher(self.url, self.manifest, storage_options, self.cache)
        res = self.manifest.resolution
        self.chunk = chunk or max(1, min(256, (4 << 20) // (res * res * 3)))
        self.decode_workers = default_decode_workers() if decode_workers is None else max(0, decode_workers)
        self.fetch_threads = max(1, fetch_threads)
        self.readahead_bytes = (max(self.window_bytes, 64 << 20) if readahead_mb is None
                                else int(readahead_mb * (1 << 20)))
        self.epoch, self.consumed = 0, 0
        self._index_cache = IndexCache(index_cache_samples)
        self.skipped = SkippedSamples()  # corrupt samples skipped so far (``skipped.count``), every epoch
        self._pool: DecodePool | None = None
        self._pipe: Pipeline | None = None
        self._generation = 0

    def __len__(self) -> int:
        """Samples this rank yields in a full epoch."""
        return self.num_samples // self.world_size

    # -- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The global position (plain JSON): the same on every rank between batches."""
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "shuffle": self.shuffle,
                "window_bytes": self.window_bytes, "num_samples": self.num_samples,
                "dataset_hash": self.manifest.dataset_hash}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a state saved by any rank of any world size."""
        if state.get("dataset_hash") not in (None, "", self.manifest.dataset_hash):  # "": saved on a manifest without one
            raise DataError(f"stream state belongs to another dataset (hash {state['dataset_hash']}, "
                            f"{self.url} has {self.manifest.dataset_hash})")
        for name in ("seed", "shuffle", "window_bytes"):
            if name in state and state[name] != getattr(self, name):
                raise DataError(f"stream state has {name}={state[name]!r} but this stream has "
                                f"{name}={getattr(self, name)!r}: the order would differ")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if not 0 <= consumed <= self.num_samples:
            raise DataError(f"stream state position {consumed} is outside the dataset's {self.num_samples} samples")
        self.epoch, self.consumed = epoch, consumed
        self._generation += 1

    # -- order -----------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        """The global order of epoch (global sample ids in manifest order)."""
        return self.order.global_order(epoch)

    # -- reading ---------------------------------------------------------
    def _normalised(self, epoch: int, consumed: int) -> tuple[int, int]:
        if self.num_samples - consumed < self.world_size:
            return epoch + 1, 0
        return epoch, consumed

    def _pipeline(self) -> Pipeline:
        here = (self.epoch, self.consumed)
        if self._pipe is not None and (self._pool is None or self._pool.broken):
            self._close_pipeline()
        if self._pipe is not None and self._normalised(*self._pipe.cursor) != here:
            self._close_pipeline()
        if self._pipe is None:
            if self._pool is None or self._pool.broken:
                if self._pool is not None:
                    self._pool.close()
                workers = self.decode_workers
                self._pool = DecodePool(workers, slots=2 * max(1, workers) + 2,
                                        slot_bytes=self.chunk * self.manifest.resolution ** 2 * 3)
            self._pipe = Pipeline(self.order, self.fetcher, self._pool, self.rank, self.world_size, self.epoch,
                                  self.consumed, self.manifest.resolution, self.chunk, self.fetch_threads,
                                  self.readahead_bytes, self.window_bytes, self._index_cache, self.skipped)
        return self._pipe

    def _close_pipeline(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rest of the current epoch; once it is used up, the whole next one."""
        self.epoch, self.consumed = self._normalised(self.epoch, self.consumed)
        generation, epoch = self._generation, self.epoch
        pipe = self._pipeline()
        while generation == self._generation and pipe is self._pipe:
            try:
                sample = pipe.next_sample(epoch)
            except DataError:
                self._close_pipeline()  # the next iter() starts afresh (and fetches again)
                raise
            if sample is None:
                if pipe.cursor[0] == epoch:  # corrupt samples skipped at the epoch's end were read too
                    self.consumed = pipe.cursor[1]
                return
            self.consumed = pipe.cursor[1]
            yield sample

    def close(self) -> None:
        """Stops the read-ahead threads and decode processes (the stream can still be iterated later)."""
        self._close_pipeline()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "ShardStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def batches(stream: ShardStream, batch_size: int) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """Endless (uint8 N×H×W×3 images, sample dicts) batches, rolling over epochs.

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
            corrupt = f" ({stream.skipped.count} corrupt samples skipped)" if stream.skipped.count else ""
            raise DataError(f"{stream.url} yields no samples for rank {stream.rank} of {stream.world_size}{corrupt}")


def torch_batches(stream: ShardStream, batch_size: int, device: Any = None, channels_first: bool = True,
                  pin_memory: bool = False) -> Iterator[tuple[Any, list[dict]]]:
    """``batches`` as torch uint8 tensors (N×3×H×W by default) on device; same state guarantees."""
    import torch

    for images, samples in batches(stream, batch_size):
        t = torch.from_numpy(images)
        if channels_first:
            t = t.permute(0, 3, 1, 2)
        if pin_memory:
            t = t.pin_memory()
        yield (t.to(device, non_blocking=pin_memory) if device is not None else t), samples
