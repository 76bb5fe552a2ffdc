"""The per-image processing of a chunk of candidates: read, process, check, write (or skip with the reason).

The same steps for the local ingest (one chunk: every candidate, ``workers`` processes) and
for each ``--ray`` task (its contiguous chunk, in its own process). Each candidate is read
from the source, bounded by ``max_member_mb``; processed (``images.process_member``) in
order; checked against the dataset's resolution (given, else the first image's); and
written with its label into the chunk's ``ShardWriter``. A member that fails any step is
handed to ``skip`` with its reason; nothing stops the run. In flight: at most
``workers * 16`` images and, past the first, ``IngestJob.inflight_bytes`` of input.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator

from trainers.data.ingest.images import process_member, resolution_problem
from trainers.data.ingest.inputs import IngestJob
from trainers.data.ingest.labels import Label
from trainers.data.ingest.sources import MemberRefused, Source
from trainers.data.ingest.writer import ShardWriter

Item = tuple[int, str, Label | None]  # (candidate index, member name, label)
Skip = Callable[[int, str, str], None]  # (candidate index, member name, reason)


def read_member(source: Source, name: str) -> tuple[bytes | None, str | None]:
    """(the member's bytes, None), or (None, the reason it is skipped)."""
    try:
        return source.read(name), None
    except MemberRefused as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - an unreadable member is skipped, not fatal
        return None, f"cannot read ({type(err).__name__}: {err})"


def processed(items: Iterable[tuple[str, bytes, int | None, str]], workers: int,
              max_inflight_bytes: int) -> Iterator[tuple]:
    """process_member over items, in order, in `workers` spawned processes (in this one for workers <= 1)."""
    if workers <= 1:
        yield from map(process_member, items)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque = deque()
        inflight = 0
        for item in items:
            pending.append((pool.submit(process_member, item), len(item[1])))
            inflight += len(item[1])
            while pending and (len(pending) >= workers * 16 or inflight > max_inflight_bytes):
                fut, size = pending.popleft()
                inflight -= size
                yield fut.result()
        while pending:
            yield pending.popleft()[0].result()


class ChunkIngest:
    """One chunk of candidates into one ShardWriter; ``accepted`` lists the candidate indices written.

    resolution: the dataset's (None: the job's --resolution, else the first image's).
    """

    def __init__(self, source: Source, writer: ShardWriter, job: IngestJob, resolution: int | None = None):
        self.source, self.writer, self.job = source, writer, job
        self.resolution = resolution if resolution is not None else job.resolution
        self.accepted: list[int] = []

    def run(self, items: Iterable[Item], skip: Skip, progress: Callable[[int], None] | None = None) -> None:
        """Every item read, processed, checked and written or skipped; progress(items processed so far)."""
        waiting: deque[tuple[int, Label | None]] = deque()  # of the items read, in order: results come in order
        results = processed(self._read(items, skip, waiting), self.job.workers, self.job.inflight_bytes)
        for done, (rel, result, err) in enumerate(results, 1):
            index, label = waiting.popleft()
            reason = err or self._misfit(result[1])
            if reason:
                skip(index, rel, reason)
            else:
                self.writer.add(rel, result[0], label)
                self.accepted.append(index)
            if progress:
                progress(done)

    def _read(self, items: Iterable[Item], skip: Skip, waiting: deque) -> Iterator[tuple]:
        for index, name, label in items:
            data, reason = read_member(self.source, name)
            if reason is not None:
                skip(index, name, reason)
                continue
            waiting.append((index, label))
            yield name, data, self.job.resolution, self.job.fmt

    def _misfit(self, resolution: int) -> str | None:
        self.resolution = self.resolution or resolution
        return resolution_problem(resolution, self.resolution)


def first_resolution(source: Source, names: list[str], fmt: str) -> int | None:
    """The resolution of the first candidate that reads and decodes: a dataset's without --resolution."""
    for name in names:
        data, reason = read_member(source, name)
        if reason is None:
            _, result, err = process_member((name, data, None, fmt))
            if not err:
                return result[1]
    return None
