"""Ingest: a folder, zip or tar of images (+ labels) -> WebDataset tar shards + manifest.json.

Bad input never stops the run and is never silent: every skipped file is listed
with its reason in ``DEST/ingest_report.json``, and a bad labels file is an
error naming its line or field (``labels.py``). Source members are read bounded
by ``max_member_mb`` (``sources.py``). Images are processed in ``workers``
processes, in order, and written into shards as they come (memory stays bounded
by a shard and the images in flight) inside a new version folder; the manifest
switches last, so a dataset already at DEST stays readable throughout
(``versions.py``). The dataset hash depends on the processed images, labels and
resolution only. With ``compose_captions``, a sample that has tags but no caption gets one
composed from its tags (``trainers/data/captions.py``), so tag datasets train text
models too.

The steps are public and ``--ray`` ingest (``orchestrator/cluster/ingest.py``) runs the
same ones: ``inputs.open_inputs`` and ``list_candidates``, ``chunk.ChunkIngest`` over the
candidates, ``report.publish`` and ``finish``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from trainers.data.ingest.chunk import ChunkIngest
from trainers.data.ingest.inputs import IngestJob, list_candidates, open_inputs
from trainers.data.ingest.labels import Label
from trainers.data.ingest.report import IngestReport, finish, publish
from trainers.data.ingest.sources import DEFAULT_MAX_MEMBER_MB, Source
from trainers.data.ingest.versions import Destination
from trainers.data.ingest.writer import ShardWriter


def ingest(src: str | Path, dest: str, labels_file: str | Path | None = None, resolution: int | None = None,
           fmt: str = "png", shard_mb: float = 64, workers: int = 2,
           progress: Callable[[int, int], None] | None = None, *, labels_encoding: str = "utf-8",
           max_member_mb: float = DEFAULT_MAX_MEMBER_MB, compose_captions: bool = False) -> IngestReport:
    """Ingests src (folder, .zip, .tar or fsspec URL) into dest; returns the report.

    The report is also written to dest/ingest_report.json. Raises IngestError
    when an argument is wrong, dest is unreachable or unwritable (before any
    work), the labels file is unusable (naming its line or field; it is decoded
    with labels_encoding), the source cannot be opened, or nothing could be
    ingested. A source member (archive member or file) larger than max_member_mb
    is skipped and reported, never read whole. A dataset already at dest stays
    published and readable until the new manifest replaces it (``versions.py``).
    compose_captions: samples with tags and no caption get a caption composed from their tags.
    """
    job = IngestJob(resolution, fmt, shard_mb, workers, max_member_mb, labels_file, compose_captions)
    labels, source = open_inputs(src, dest, job, labels_encoding)
    try:
        report = _ingest(source, Destination(dest), labels, job, progress)
    finally:
        source.close()
    return finish(src, dest, report)


def _ingest(source: Source, dest: Destination, labels: dict[str, Label] | None, job: IngestJob,
            progress: Callable[[int, int], None] | None) -> IngestReport:
    report = IngestReport()
    candidates = list_candidates(source, labels, job, report.skip)
    version = dest.begin()
    try:
        writer = ShardWriter(dest, version, job.fmt, job.shard_mb)
        chunk = ChunkIngest(source, writer, job)
        chunk.run(((i, name, job.label(labels, name)) for i, name in enumerate(candidates)),
                  lambda _, name, reason: report.skip(name, reason),
                  progress and (lambda done: progress(done, len(candidates))))
        report.ingested = len(chunk.accepted)
        publish(dest, version, writer.manifest(chunk.resolution) if report.ingested else None, report)
    except BaseException:
        dest.abandon(version)  # the published dataset was never touched; only this version's folder goes
        raise
    return report
