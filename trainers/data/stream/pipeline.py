"""The read-ahead pipeline behind ShardStream: fetch threads, a producer, decode processes.

One rank's pipeline, from a global position on, endlessly across epochs:

- the *producer* thread walks the rank's positions (``order.py``), keeps the
  shards of the current window and the next ``readahead`` bytes being fetched
  by a thread pool, and cuts the positions into tasks of up to ``chunk``
  samples whose encoded bytes it copies out of the shards;
- one *driver* thread per decode worker takes a free slot of a shared memory
  block, then the next task, and has its worker decode the task into the slot
  (``decode_pool.py``: a spawned process that imports only numpy and Pillow; JPEG decoding is the
  limit, so it is spread over the cores);
- the consumer (``next_sample``) takes finished tasks in order and copies each
  image out of the slot before handing it over, then frees the slot.

The number of slots bounds how far decoding runs ahead; a slot is taken before
a task, so tasks hold slots in order and the oldest unfinished task always has
one. Faults surface in order: a task that failed carries the error to the
consumer, which raises it when it reaches that task. A corrupt sample (not a
PNG or JPEG of the dataset's resolution, or undecodable: ``decode.py``) fails
only itself: the consumer skips it, names it in a warning and counts it
(``SkippedSamples``); it still counts as read in the stream's position.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainers.data.stream.decode import parse_meta
from trainers.data.stream.decode_pool import DecodePool
from trainers.data.stream.order import EpochOrder, EpochPlan, rank_rounds
from trainers.data.errors import DataError
from trainers.data.stream.shards import ShardFetcher
from trainers.data.stream.tarindex import index_tar

_POLL_S = 0.1
log = logging.getLogger("ganray.data.stream")


_STAGING_PREFIX = "ganray-shards-"


def staging_dir(need_bytes: int) -> str:
    """A private folder for staged shards: in /dev/shm when it has room for need_bytes, else the temp folder.

    Its name carries the owner's PID, so folders left by killed processes (a
    SIGKILLed Ray worker runs no exit handlers) are removed by the next reader.
    """
    base = None
    try:
        st = os.statvfs("/dev/shm")
        if os.access("/dev/shm", os.W_OK) and st.f_bavail * st.f_frsize > 2 * need_bytes:
            base = "/dev/shm"
    except OSError:
        pass
    _remove_orphans(base or tempfile.gettempdir())
    return tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=base)


def _remove_orphans(folder: str) -> None:
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid = name[len(_STAGING_PREFIX):].split("-", 1)[0]
        if not name.startswith(_STAGING_PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        except OSError:
            pass


def index_shard(data: bytes, name: str, samples: int, url: str) -> tuple[list[str], np.ndarray, list[tuple]]:
    """(keys, image spans, (tags, caption) labels) of a verified shard's samples, in tar order."""
    keys, images, metas = index_tar(data, name)
    if len(keys) != samples:
        raise DataError(f"shard {name} of {url} has {len(keys)} samples, the manifest says {samples}")
    labels = []
    for key, m in zip(keys, metas):
        try:
            labels.append(parse_meta(None if m is None else data[m[0]:m[0] + m[1]]))
        except (ValueError, AttributeError) as err:
            raise DataError(f"shard {name}: sample {key}: bad JSON metadata ({err})") from None
    return keys, np.asarray(images, dtype=np.int64).reshape(len(keys), 2), labels


class IndexCache:
    """Shard indexes (keys, spans, labels) kept across epochs, up to max_samples, least recently used out.

    A shard fetched again in a later epoch is verified by its sha256 and then
    needs no re-indexing (about a third of the reader's own CPU per image).
    """

    def __init__(self, max_samples: int):
        self.max_samples, self.samples = max_samples, 0
        self._items: OrderedDict[int, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: int) -> tuple | None:
        with self._lock:
            item = self._items.get(index)
            if item is not None:
                self._items.move_to_end(index)
            return item

    def put(self, index: int, item: tuple) -> None:
        with self._lock:
            if index in self._items or len(item[0]) > self.max_samples:
                return
            self._items[index] = item
            self.samples += len(item[0])
            while self.samples > self.max_samples:
                _, old = self._items.popitem(last=False)
                self.samples -= len(old[0])


class Staging:
    """Shards fetched ahead into files the decode workers map; a file goes once no task needs it.

    A shard is *wanted* while it is in the current window or the read-ahead,
    and *referenced* while a task that reads it is not decoded yet; it is
    deleted when neither holds (workers that mapped it keep their mapping).
    """

    def __init__(self, fetcher: ShardFetcher, root: str, threads: int, index_cache: "IndexCache | None" = None):
        self.fetcher, self.root, self.index_cache = fetcher, root, index_cache
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="ganray-fetch")
        self._futures: dict[int, Future] = {}
        self._refs: dict[int, int] = {}
        self._wanted: set[int] = set()
        self._lock = threading.Lock()
        self._cleanup = weakref.finalize(self, shutil.rmtree, root, True)  # also at interpreter exit

    def _fetch(self, index: int) -> "Staged":
        data = self.fetcher.fetch(index)  # verified against the manifest's sha256
        info = self.fetcher.manifest.shards[index]
        cached = self.index_cache.get(index) if self.index_cache is not None else None
        keys, spans, labels = cached or index_shard(data, info.path, info.samples, self.fetcher.url)
        if self.index_cache is not None and cached is None:
            self.index_cache.put(index, (keys, spans, labels))
        path = os.path.join(self.root, f"{index:08d}.tar")
        with open(path + ".tmp", "wb") as fh:
            fh.write(data)
        os.replace(path + ".tmp", path)
        return Staged(path, info.path, keys, spans, labels)

    def want(self, shards: list[int]) -> None:
        """Fetch these (in this order) and keep them; stop keeping the others."""
        with self._lock:
            self._wanted = set(shards)
            for s in shards:
                if s not in self._futures:
                    self._futures[s] = self._pool.submit(self._fetch, s)
            for s in [s for s in self._futures if s not in self._wanted and not self._refs.get(s)]:
                self._drop(s)

    def acquire(self, index: int, stop: threading.Event) -> "Staged | None":
        """The staged shard, waited for; counts a reference until release(). None if stopped."""
        with self._lock:
            fut = self._futures.get(index)
            if fut is None:
                fut = self._futures[index] = self._pool.submit(self._fetch, index)
            self._refs[index] = self._refs.get(index, 0) + 1
        while not stop.is_set():
            try:
                return fut.result(timeout=_POLL_S)
            except TimeoutError:
                continue
            except BaseException:
                self.release(index)
                raise
        self.release(index)
        return None

    def release(self, index: int) -> None:
        with self._lock:
            self._refs[index] -= 1
            if not self._refs[index] and index not in self._wanted:
                self._drop(index)

    def _drop(self, index: int) -> None:
        self._refs.pop(index, None)
        fut = self._futures.pop(index, None)
        if fut is not None:
            fut.add_done_callback(lambda f: _unlink_result(f))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._futures.clear()
        self._cleanup()


def _unlink_result(fut: Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        try:
            os.unlink(fut.result().path)
        except OSError:
            pass


@dataclass
class Staged:
    """A shard staged for the decode workers: its file, and per sample its key and byte spans."""
    path: str
    name: str
    keys: list[str]
    spans: np.ndarray  # (samples, 2): image offset and size
    labels: list[tuple]  # (tags, caption) per sample


class SkippedSamples:
    """The corrupt samples a stream skipped: all counted, the first ``named`` of them (and then every
    thousandth) named in a warning."""

    def __init__(self, named: int = 20):
        self.count, self.named = 0, named
        self._lock = threading.Lock()

    def add(self, shard: str, url: str, key: str, reason: str) -> None:
        with self._lock:
            self.count += 1
            count = self.count
        if count <= self.named or count % 1000 == 0:
            log.warning("ganray: shard %s of %s: sample %s is skipped: %s (%d corrupt samples skipped so far)",
                        shard, url, key, reason, count)


@dataclass
class Task:
    seq: int
    epoch: int
    position: int  # global position of the first sample
    shard_ids: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    shard_of: list[int] = field(default_factory=list)
    spans: np.ndarray | None = None
    error: str | None = None
    corrupt: dict[int, str] = field(default_factory=dict)  # index in the task: why that sample is skipped
    slot: int = -1
    keys: list[str] = field(default_factory=list)
    labels: list[tuple] = field(default_factory=list)


class Pipeline:
    """One rank's samples from (epoch, consumed) on, decoded ahead; see the module docstring."""

    def __init__(self, order: EpochOrder, fetcher: ShardFetcher, pool: DecodePool, rank: int, world_size: int,
                 epoch: int, consumed: int, resolution: int, chunk: int, fetch_threads: int, readahead_bytes: int,
                 window_bytes: int, index_cache: IndexCache | None = None, skipped: SkippedSamples | None = None):
        self.order, self.fetcher, self.pool = order, fetcher, pool
        self.skipped = skipped if skipped is not None else SkippedSamples()
        self.rank, self.world, self.res, self.chunk = rank, world_size, resolution, chunk
        self.readahead_bytes = readahead_bytes
        self.cursor = (epoch, consumed)  # the global state after the last sample handed out
        self._start = (epoch, consumed)
        self._stop = threading.Event()
        self._tasks: queue.Queue = queue.Queue(maxsize=max(2, pool.slots))
        self._free: queue.Queue = queue.Queue()
        for s in range(pool.slots):
            self._free.put(s)
        self._done: dict[int, Task] = {}
        self._cv = threading.Condition()
        self._head: Task | None = None
        self._head_i = 0
        self._head_images: np.ndarray | None = None
        self._next_seq = 0
        self.staging = Staging(fetcher, staging_dir(window_bytes + readahead_bytes), fetch_threads, index_cache)
        self._threads = [threading.Thread(target=self._produce, name="ganray-producer", daemon=True)]
        self._threads += [threading.Thread(target=self._drive, args=(w,), name=f"ganray-driver-{w}", daemon=True)
                          for w in range(pool.size)]
        for t in self._threads:
            t.start()

    # -- consumer side ---------------------------------------------------
    def next_sample(self, epoch: int) -> dict[str, Any] | None:
        """The next sample of epoch, or None once this rank's part of epoch is used up. A corrupt sample is
        skipped (named and counted in ``skipped``); it moves the position like any other."""
        while True:
            if self._head is None or self._head_i >= len(self._head.keys):
                self._release_head()
                self._head, self._head_i = self._wait(self._next_seq), 0
                self._next_seq += 1
                if self._head.error is None:
                    self._head_images = self.pool.view(self._head.slot, len(self._head.keys), self.res)
            task = self._head
            if task.error:
                raise DataError(task.error)
            if task.epoch != epoch:
                return None
            i = self._head_i
            self._head_i += 1
            position = task.position + i * self.world  # this rank's position; the global state counts whole rounds
            self.cursor = (task.epoch, position - self.rank + self.world)
            if i in task.corrupt:
                self.skipped.add(task.names[task.shard_of[i]], self.fetcher.url, task.keys[i], task.corrupt[i])
                continue
            tags, caption = task.labels[i]
            return {"key": task.keys[i], "image": self._head_images[i].copy(), "tags": tags, "caption": caption}

    def _release_head(self) -> None:
        self._head_images = None
        if self._head is not None and self._head.slot >= 0:
            self._free.put(self._head.slot)
            self._head.slot = -1

    def _wait(self, seq: int) -> Task:
        with self._cv:
            while seq not in self._done:
                if not any(t.is_alive() for t in self._threads):
                    raise DataError("the data pipeline stopped without an error (closed?)")
                self._cv.wait(_POLL_S)
            return self._done.pop(seq)

    def close(self) -> None:
        """Stops the threads (finishing the tasks in decode workers) and drops what was read ahead."""
        self._stop.set()
        self._release_head()
        for t in self._threads:
            t.join(timeout=60)
        self.staging.close()
        with self._cv:
            self._done.clear()

    # -- producer --------------------------------------------------------
    def _put(self, task: Task) -> bool:
        while not self._stop.is_set():
            try:
                self._tasks.put(task, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        seq = 0
        epoch, consumed = self._start
        try:
            while not self._stop.is_set():
                plan = self.order.plan(epoch)
                rounds = rank_rounds(self.order.num_samples, consumed, self.world)
                if rounds == 0 and consumed == 0:
                    raise DataError(f"{self.fetcher.url} has {self.order.num_samples} samples, too few for "
                                    f"rank {self.rank} of {self.world} to get any")
                pos, last = consumed + self.rank, consumed + self.rank + (rounds - 1) * self.world
                j = plan.window_of(pos) if rounds else len(plan.windows)
                while j < len(plan.windows) and pos <= last and not self._stop.is_set():
                    self._prefetch(plan, j)
                    a, b = int(plan.starts[j]), int(plan.starts[j + 1])
                    positions = np.arange(pos, min(b, last + 1), self.world, dtype=np.int64)
                    if len(positions):
                        ids = self.order.window_ids(plan, j)[positions - a]
                        shard_of, local = self.order.locate(ids)
                        for s in range(0, len(positions), self.chunk):
                            task = self._task(seq, epoch, positions[s:s + self.chunk], shard_of[s:s + self.chunk],
                                              local[s:s + self.chunk])
                            if task is None:
                                return
                            if not self._put(task):
                                self._release(task)
                                return
                            seq += 1
                        pos = int(positions[-1]) + self.world
                    j += 1
                epoch, consumed = epoch + 1, 0
        except Exception as err:  # noqa: BLE001 - every failure reaches the consumer, in order
            msg = str(err) if isinstance(err, DataError) else f"reading {self.fetcher.url} failed: {type(err).__name__}: {err}"
            self._put(Task(seq, epoch, -1, error=msg))

    def _task(self, seq: int, epoch: int, positions: np.ndarray, shard_of: np.ndarray, local: np.ndarray) -> Task | None:
        task = Task(seq, epoch, int(positions[0]))
        shards, where = np.unique(shard_of, return_inverse=True)
        spans = np.empty((len(local), 2), dtype=np.int64)
        keys: list[str | None] = [None] * len(local)
        labels: list[tuple | None] = [None] * len(local)
        for k, s in enumerate(shards.tolist()):
            staged = self.staging.acquire(s, self._stop)
            if staged is None:
                self._release(task)
                return None
            task.shard_ids.append(s)
            task.paths.append(staged.path)
            task.names.append(staged.name)
            rows = np.flatnonzero(where == k)
            spans[rows] = staged.spans[local[rows]]
            for r, j in zip(rows.tolist(), local[rows].tolist()):
                keys[r], labels[r] = staged.keys[j], staged.labels[j]
        task.shard_of, task.spans, task.keys, task.labels = where.tolist(), spans, keys, labels
        return task

    def _release(self, task: Task) -> None:
        for s in task.shard_ids:
            self.staging.release(s)
        task.shard_ids = []

    def _prefetch(self, plan: EpochPlan, j: int) -> None:
        """Keeps window j and the next readahead_bytes of shards (into the next epoch too) fetched or fetching."""
        wanted: list[int] = [int(s) for s in plan.windows[j]]
        extra, p, k = 0, plan, j + 1
        while extra < self.readahead_bytes:
            if k >= len(p.windows):
                if p.epoch != plan.epoch:
                    break
                p, k = self.order.plan(plan.epoch + 1), 0
            for s in p.windows[k]:
                wanted.append(int(s))
                extra += int(self.order.bytes[s])
            k += 1
        self.staging.want(list(dict.fromkeys(wanted)))

    # -- drivers ---------------------------------------------------------
    def _take(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    def _drive(self, worker: int) -> None:
        while not self._stop.is_set():
            slot = self._take(self._free)
            if slot is None:
                return
            task = self._take(self._tasks)
            if task is None:
                self._free.put(slot)
                return
            if task.error is None:
                try:
                    task.corrupt = dict(self.pool.run(worker, slot, task.paths, task.names, task.shard_of,
                                                      task.spans, self.res))
                    task.slot = slot
                except DataError as err:
                    task.error = str(err)
                except OSError as err:
                    task.error = str(err)
                    self.pool.broken = str(err)
            self._release(task)
            if task.slot < 0:
                self._free.put(slot)
            with self._cv:
                self._done[task.seq] = task
                self._cv.notify_all()
            if self.pool.broken:
                return
