"""What one ingest reads: its settings checked, its labels read, its source opened, its candidates listed.

The first steps of the local ingest (``local.py``) and of ``--ray`` ingest
(``orchestrator/cluster/ingest.py``) alike: every argument, both URL schemes and the
destination's writability are checked before any work, and the candidates (the image
members to process, in order) are the same for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from trainers.data.captions import compose_caption
from trainers.data.ingest.labels import Label, LabelsError, read_labels
from trainers.data.ingest.sources import DEFAULT_MAX_MEMBER_MB, Source, SourceError, open_source
from trainers.data.storage import open_filesystem
from trainers.errors import GanrayError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class IngestError(GanrayError, RuntimeError):
    """Ingest cannot run at all (unreachable destination, bad labels file, nothing ingestible)."""


@dataclass
class IngestJob:
    """The settings of one ingest: what shapes its dataset and how its work is spread."""

    resolution: int | None = None  # None: the first image's
    fmt: str = "png"
    shard_mb: float = 64
    workers: int = 2  # processes that decode and resize (the local ingest's; one in each --ray task)
    max_member_mb: float = DEFAULT_MAX_MEMBER_MB
    labels_file: str | Path | None = None
    compose_captions: bool = False

    @property
    def member_bytes(self) -> int:
        """The largest source member read, in bytes."""
        return max(1, int(self.max_member_mb * 2 ** 20))

    @property
    def inflight_bytes(self) -> int:
        """The most input bytes in the worker processes at a time (past the first item)."""
        return max(256 * 2 ** 20, int(2 * self.max_member_mb * 2 ** 20))

    def label(self, labels: dict[str, Label] | None, rel: str) -> Label | None:
        """rel's label; with compose_captions, a caption composed from its tags where it has none."""
        label = labels.get(rel) if labels is not None else None
        if self.compose_captions and label is not None and label.tags and not label.caption:
            label = Label(label.tags, compose_caption(label.tags, rel))
        return label


def _check_arguments(job: IngestJob) -> None:
    if job.fmt not in ("png", "jpg"):
        raise IngestError(f"--format must be png or jpg, got {job.fmt!r}")
    if job.resolution is not None and job.resolution < 1:
        raise IngestError(f"--resolution must be positive, got {job.resolution}")
    if not job.shard_mb > 0:
        raise IngestError(f"--shard-mb must be positive, got {job.shard_mb}")
    if not job.max_member_mb > 0:
        raise IngestError(f"--max-member-mb must be positive, got {job.max_member_mb}")


def _check_scheme(url: str, what: str) -> None:
    """An unknown scheme is an error that lists the ones that work, before anything else happens."""
    from trainers.urls import scheme_problem

    problem = scheme_problem(str(url))
    if problem:
        raise IngestError(f"{what} {url}: {problem}")


def _check_writable(dest: str) -> None:
    try:
        fs, root = open_filesystem(dest)
        if "://" not in dest or dest.startswith("file://"):
            fs.makedirs(root, exist_ok=True)  # on object stores makedirs would create a missing bucket
        probe = f"{root}/.ganray-write-probe"
        with fs.open(probe, "wb") as fh:
            fh.write(b"ok")
        fs.rm(probe)
    except Exception as err:  # noqa: BLE001 - every failure here means the same thing
        raise IngestError(f"destination {dest} is unreachable or not writable: {type(err).__name__}: {err}") from None


def open_inputs(src: str | Path, dest: str, job: IngestJob,
                labels_encoding: str = "utf-8") -> tuple[dict[str, Label] | None, Source]:
    """(labels, opened source) of an ingest, once every argument, both URL schemes and dest's
    writability are checked; IngestError naming what is wrong. The caller closes the source."""
    _check_arguments(job)
    _check_scheme(str(src), "source")
    _check_scheme(dest, "destination")
    _check_writable(dest)
    try:
        labels = read_labels(job.labels_file, labels_encoding) if job.labels_file else None
    except LabelsError as err:
        raise IngestError(str(err)) from None
    try:
        return labels, open_source(src, job.member_bytes)
    except SourceError as err:
        raise IngestError(str(err)) from None


def list_candidates(source: Source, labels: dict[str, Label] | None, job: IngestJob,
                    skip: Callable[[str, str], None]) -> list[str]:
    """The image members to process, in order; everything else goes to skip(name, reason)."""
    for name, reason in source.refused:
        skip(name, reason)
    labels_name = Path(job.labels_file).name if job.labels_file else None
    names = [n for n in source.names if not (n in ("labels.csv", "labels.json") and
                                              (labels_name is None or n == labels_name))]
    if labels is not None:
        for name in sorted(set(labels) - set(names)):
            skip(name, "listed in labels but no such file")
    candidates = []
    for name in names:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            skip(name, f"not an image file (suffix {suffix or 'none'})")
        elif labels is not None and name not in labels:
            skip(name, "no label for this file")
        else:
            candidates.append(name)
    return candidates
