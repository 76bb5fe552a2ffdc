"""The decode workers of a stream: spawned processes (threads where processes cannot start) that
decode tasks of samples into the slots of one shared memory block."""
from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import pickle
import tempfile
import warnings
import weakref

import numpy as np

from trainers import settings
from trainers.data.errors import DataError
from trainers.data.stream.decode import ShardViews, decode_task, worker_main


def default_decode_workers() -> int:
    """Decode processes per stream: ``GANRAY_DECODE_WORKERS``, else the cores this process may use."""
    env = settings.get_int("GANRAY_DECODE_WORKERS")
    if env is not None:
        return max(0, env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _shutdown(procs: list, conns: list, block: mmap.mmap | None) -> None:
    for c in conns:
        try:
            c.send_bytes(b"")
        except OSError:
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    for c in conns:
        c.close()
    if block is not None:
        try:
            block.close()
        except BufferError:  # a view is still alive somewhere; the OS frees it at exit
            pass


class DecodePool:
    """Decode workers sharing a block of ``slots`` output slots of ``slot_bytes`` each.

    ``workers`` > 0: spawned processes (safe after threads and s3fs clients, unlike
    fork); 0, or inside a daemonic process (which may not have children): threads.
    """

    def __init__(self, workers: int, slots: int, slot_bytes: int):
        self.slots, self.slot_bytes = slots, slot_bytes
        total = slots * slot_bytes
        self.procs: list = []
        self.conns: list = []
        block = None
        if workers > 0 and not mp.current_process().daemon:
            try:
                block = self._start(workers, total)
            except Exception as err:  # noqa: BLE001 - any failure to start leaves threads as the way to decode
                warnings.warn(f"ganray: decode processes did not start ({err}); decoding in threads", stacklevel=3)
                _shutdown(self.procs, self.conns, None)
                self.procs, self.conns, block = [], [], None
        self.threads = 0 if self.procs else max(1, min(2, workers))
        self._block = block
        self.buf = np.frombuffer(block, np.uint8) if block is not None else np.empty(total, np.uint8)
        self.broken: str | None = None
        self._thread_views: dict[int, ShardViews] = {}
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.conns, block)

    def _start(self, workers: int, total: int) -> mmap.mmap:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, path = tempfile.mkstemp(prefix="ganray-decode-", dir=folder)
        try:
            os.ftruncate(fd, total)
            block = mmap.mmap(fd, total)
            ctx = mp.get_context("spawn")
            for i in range(workers):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=worker_main, args=(child, path, total), daemon=True,
                                name=f"ganray-decode-{i}")
                p.start()
                child.close()
                self.procs.append(p)
                self.conns.append(parent)
            for p, c in zip(self.procs, self.conns):
                if not c.poll(120) or c.recv_bytes() != b"ready":
                    raise RuntimeError(f"decode process {p.name} did not report ready (exit code {p.exitcode})")
        finally:
            os.close(fd)
            os.unlink(path)  # every worker has it mapped; the memory lives until the last one closes it
        return block

    @property
    def size(self) -> int:
        """How many tasks can run at once."""
        return len(self.procs) or self.threads

    def view(self, slot: int, count: int, res: int) -> np.ndarray:
        start = slot * self.slot_bytes
        return self.buf[start:start + count * res * res * 3].reshape(count, res, res, 3)

    def run(self, worker: int, slot: int, paths: list[str], names: list[str], shard_of: list[int],
            spans: np.ndarray, res: int) -> list[tuple[int, str]]:
        """Decodes a task into slot; (index, reason) of its corrupt samples. Raises DataError (a staged shard
        is gone) or OSError (worker lost)."""
        if not self.procs:
            views = self._thread_views.setdefault(worker, ShardViews())
            views.forget_unlinked()
            return decode_task(self.view(slot, len(spans), res), views, paths, names, shard_of, spans, res)
        conn = self.conns[worker]
        try:
            conn.send_bytes(pickle.dumps((slot * self.slot_bytes, res, paths, names, shard_of, spans),
                                         protocol=pickle.HIGHEST_PROTOCOL))
            corrupt, failed = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            p = self.procs[worker]
            p.join(timeout=1)
            raise OSError(f"decode process {p.name} stopped (exit code {p.exitcode}): {type(exc).__name__}") from None
        if failed is not None:
            raise DataError(failed)
        return corrupt

    def close(self) -> None:
        self.buf = np.empty(0, np.uint8)
        self._finalizer()
