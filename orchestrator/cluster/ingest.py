"""``ganray data ingest SRC DEST --ray``: the decode and resize as Ray tasks over the cluster's CPUs.

The dataset is the local ingest's (``trainers/data/ingest/local.py``), made by the same public
steps of ``trainers/data/ingest``: the same candidates (``inputs.list_candidates``), the same
per-image processing (``chunk.ChunkIngest``), the same sample keys, labels, resolution rule,
manifest and dataset hash, and the same ending (``report.publish``, ``finish``); only the shard
layout differs. The driver lists SRC, reads the labels, picks the resolution (``--resolution``,
else the first image that decodes, as the local ingest does) and opens a version folder at DEST.
Each task takes a contiguous chunk of candidates, reads them from SRC itself, processes them and
writes its shards into ``<version>/part-NNNNNN/`` with the ``ShardWriter``, then returns what the
manifest needs (``writer.Written``). The driver joins the parts (``writer.join_parts``): every
sample gets the key one writer gives over the whole dataset (a key made unique within a chunk may
collide with one of another chunk; such a shard is rewritten with the right names), then publishes.

SRC and DEST must be reachable from every node: a URL (``s3://...``), or ``file:///path`` for a
filesystem mounted on every node; a plain local path is refused. Each task builds its own
filesystem client from its node's environment: no credential travels with a task.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from trainers.data.ingest.chunk import ChunkIngest, first_resolution
from trainers.data.ingest.inputs import IngestError, IngestJob, list_candidates, open_inputs
from trainers.data.ingest.labels import Label
from trainers.data.ingest.report import IngestReport, finish, publish
from trainers.data.ingest.sources import ARCHIVE_SUFFIXES, DEFAULT_MAX_MEMBER_MB, member_reader
from trainers.data.ingest.versions import Destination
from trainers.data.ingest.writer import ShardWriter, join_parts
from trainers.errors import UsageError

CHUNK_MIN, CHUNK_MAX = 32, 4000  # candidates per task
TASKS_PER_CPU = 4  # chunks per CPU, so that a slow chunk does not leave the others idle at the end


def require_shared(url: str, what: str) -> None:
    """UsageError unless url is something every node of a cluster can reach."""
    text = str(url)
    if "://" not in text:
        raise UsageError(f"--ray: {what} {url} is a local path, which the cluster's other nodes do not see; "
                         f"give a URL every node reaches (s3://...), or file:///{text.lstrip('/')} for a "
                         "filesystem mounted at the same path on every node")
    scheme, rest = text.split("://", 1)
    if scheme.lower() == "file" and not rest.startswith("/"):
        raise UsageError(f"--ray: {what} {url}: a file:// URL needs an absolute path (file:///shared/...)")
    if scheme.lower() == "memory":
        raise UsageError(f"--ray: {what} {url}: memory:// lives in one process; no other node sees it")
    if what == "SRC" and text.lower().endswith(ARCHIVE_SUFFIXES) and not text.lower().endswith(".zip"):
        raise UsageError(f"--ray: SRC {url} is a tar archive, which cannot be split across tasks (each would read "
                         "all of it); unpack it into a folder (or a .zip) first, or ingest it without --ray")


def ingest_on_ray(src: str, dest: str, labels_file: str | Path | None = None, resolution: int | None = None,
                  fmt: str = "png", shard_mb: float = 64, progress: Callable[[int, int], None] | None = None, *,
                  labels_encoding: str = "utf-8", max_member_mb: float = DEFAULT_MAX_MEMBER_MB,
                  compose_captions: bool = False, ray_address: str | None = None) -> IngestReport:
    """ingest() of src into dest with the processing in Ray tasks; the report is ingest()'s."""
    require_shared(src, "SRC")
    require_shared(dest, "DEST")
    job = IngestJob(resolution, fmt, shard_mb, 1, max_member_mb, labels_file, compose_captions)
    labels, source = open_inputs(src, dest, job, labels_encoding)
    report = IngestReport()
    try:
        names = list_candidates(source, labels, job, report.skip)
        expected = resolution or first_resolution(source, names, fmt)
    finally:
        source.close()
    plan = _Plan(src, dest, names, [job.label(labels, n) for n in names], expected, job)
    _run(plan, report, progress, ray_address)
    return finish(src, dest, report)


class _Plan:
    """Everything the tasks and the driver's assembly share."""

    def __init__(self, src: str, dest: str, names: list[str], labels: list[Label | None], expected: int | None,
                 job: IngestJob):
        self.src, self.dest, self.names, self.labels, self.expected, self.job = src, dest, names, labels, expected, job

    def chunks(self, cpus: float) -> list[list[tuple[int, str, Label | None]]]:
        n = len(self.names)
        size = min(CHUNK_MAX, max(CHUNK_MIN, math.ceil(n / max(1.0, cpus * TASKS_PER_CPU))))
        items = list(zip(range(n), self.names, self.labels))
        return [items[i:i + size] for i in range(0, n, size)]

    def task_args(self, version: str, part: int, chunk: list) -> dict[str, Any]:
        return {"src": self.src, "dest": self.dest, "folder": f"{version}/part-{part:06d}", "items": chunk,
                "job": self.job, "expected": self.expected}


# -- inside a task ---------------------------------------------------------------------------

class _PartDestination(Destination):
    """A task's view of DEST: its shards go into its part folder; the version's heartbeat is the driver's."""

    def beat(self, version: str, force: bool = False) -> None:
        if self.local:
            self.fs.makedirs(self.path(version), exist_ok=True)


def ingest_chunk(args: dict[str, Any]) -> dict[str, Any]:
    """One task: a chunk of candidates read, processed and written into shards in its part folder.

    Returns the candidate indices written (in order), the skipped (index, name, reason) and what
    the manifest needs of the part (``Written``)."""
    job: IngestJob = args["job"]
    reader = member_reader(args["src"], job.member_bytes)
    writer = ShardWriter(_PartDestination(args["dest"]), args["folder"], job.fmt, job.shard_mb)
    chunk, skipped = ChunkIngest(reader, writer, job, args["expected"]), []
    try:
        chunk.run(args["items"], lambda index, name, reason: skipped.append((index, name, reason)))
        writer.flush()
    finally:
        reader.close()
    return {"accepted": chunk.accepted, "skipped": skipped, "written": writer.written}


# -- the driver ------------------------------------------------------------------------------

def _run(plan: _Plan, report: IngestReport, progress, ray_address: str | None) -> None:
    from orchestrator.cluster.endpoints import resolve_endpoints
    from orchestrator.job.ray_runtime import ray_init

    ray_init(ray_address or resolve_endpoints().ray_address)
    dest = Destination(plan.dest)
    version = dest.begin()
    try:
        results = _execute(plan, dest, version, progress)
        _assemble(plan, dest, version, results, report)
    except BaseException:
        dest.abandon(version)  # the published dataset was never touched; only this version's folder goes
        raise


def _execute(plan: _Plan, dest: Destination, version: str, progress) -> list[dict[str, Any]]:
    """Every chunk as a Ray task (one CPU each); their results in chunk order."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=3)(ingest_chunk)
    chunks = plan.chunks(ray.cluster_resources().get("CPU", 1))
    parts = {task.remote(plan.task_args(version, i, chunk)): (i, len(chunk)) for i, chunk in enumerate(chunks)}
    results, done, pending = {}, 0, list(parts)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=30)
            dest.beat(version)  # the version is in progress (refreshed at most once a minute)
            for ref in ready:
                part, n = parts[ref]
                results[part], done = ray.get(ref), done + n
                if progress:
                    progress(done, len(plan.names))
    except ray.exceptions.RayError as err:
        for ref in pending:
            ray.cancel(ref, force=True)
        first = (str(err).strip().splitlines() or [""])[-1]
        raise IngestError(f"an ingest task failed ({type(err).__name__}): {first[:500]}") from None
    return [results[i] for i in range(len(chunks))]


def _assemble(plan: _Plan, dest: Destination, version: str, results: list[dict[str, Any]],
              report: IngestReport) -> None:
    """The local ingest's keys, hash and manifest from the tasks' results; publishes the version."""
    for _, name, reason in sorted(s for r in results for s in r["skipped"]):
        report.skip(name, reason)
    # chunks are contiguous: their results in chunk order are in candidate order
    written = join_parts(((r["accepted"], r["written"]) for r in results), plan.names, dest)
    report.ingested = len(written.hash_items)
    publish(dest, version, written.manifest(plan.expected, plan.job.fmt) if report.ingested else None, report)
