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
composed from its tags (``trainers/conditioning/captions.py``), so tag datasets train text
models too.
"""
from __future__ import annotations

import io
import json
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

from trainers.conditioning.captions import compose_caption
from trainers.errors import GanrayError
from trainers.data.labels import Label, LabelsError, read_labels
from trainers.data.manifest import Manifest
from trainers.data.sources import DEFAULT_MAX_MEMBER_MB, MemberRefused, Source, SourceError, open_source
from trainers.data.storage import join, open_filesystem
from trainers.data.versions import Destination
from trainers.data.writer import ShardWriter

__all__ = ["IngestError", "IngestReport", "Label", "ingest", "process_image", "read_labels"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_PIXELS = 64 * 1024 * 1024  # beyond this an image is treated as a decompression bomb


class IngestError(GanrayError, RuntimeError):
    """Ingest cannot run at all (unreachable destination, bad labels file, nothing ingestible)."""


@dataclass
class IngestReport:
    ingested: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    manifest: Manifest | None = None
    version: str | None = None  # the version folder the manifest now names
    removed: list[str] = field(default_factory=list)  # old version folders (or pre-version shards) removed
    notes: list[str] = field(default_factory=list)

    def skip(self, file: str, reason: str) -> None:
        self.skipped.append({"file": file, "reason": reason})

    def to_json(self) -> str:
        return json.dumps({"ingested": self.ingested, "skipped": self.skipped, "version": self.version,
                           "removed": self.removed, "notes": self.notes}, indent=2)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16-bit and float scaled down, alpha composited on white, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def process_image(data: bytes, resolution: int | None, fmt: str) -> tuple[bytes, int]:
    """Decodes, converts to RGB, centre-crops, resizes (bicubic, antialiased), re-encodes.

    Returns (encoded bytes, resolution). Raises ValueError with the reason on bad input.
    """
    if not data:
        raise ValueError("zero-byte file")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"decompression bomb ({img.width}x{img.height} pixels)")
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(f"decompression bomb ({err})") from None
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad files
            raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None
    try:
        img = _to_rgb(ImageOps.exif_transpose(img) or img)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot convert to RGB ({type(err).__name__}: {err})") from None
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    res = resolution or side
    if side != res:
        img = img.resize((res, res), Image.Resampling.BICUBIC, reducing_gap=None)  # Pillow's resize is antialiased
    out = io.BytesIO()
    if fmt == "png":
        img.save(out, format="PNG", compress_level=1)
    else:
        img.save(out, format="JPEG", quality=95)
    return out.getvalue(), res


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


def _process(item: tuple[str, bytes, int | None, str]) -> tuple[str, tuple[bytes, int] | None, str | None]:
    rel, data, resolution, fmt = item
    try:
        return rel, process_image(data, resolution, fmt), None
    except ValueError as err:
        return rel, None, str(err)
    except Exception as err:  # noqa: BLE001 - one bad file never stops the run
        return rel, None, f"cannot process image ({type(err).__name__}: {err})"


def _processed(items: Iterator[tuple[str, bytes, int | None, str]], workers: int,
               max_inflight_bytes: int) -> Iterator[tuple]:
    """_process over items, in order, in `workers` processes (in this one for workers <= 1).

    In flight: at most workers * 16 items and, past the first, max_inflight_bytes of input.
    """
    if workers <= 1:
        yield from map(_process, items)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque = deque()
        inflight = 0
        for item in items:
            pending.append((pool.submit(_process, item), len(item[1])))
            inflight += len(item[1])
            while pending and (len(pending) >= workers * 16 or inflight > max_inflight_bytes):
                fut, size = pending.popleft()
                inflight -= size
                yield fut.result()
        while pending:
            yield pending.popleft()[0].result()


def open_inputs(src: str | Path, dest: str, labels_file: str | Path | None, resolution: int | None, fmt: str,
                shard_mb: float, labels_encoding: str, max_member_mb: float) -> tuple[dict[str, Label] | None, Source]:
    """(labels, opened source) of an ingest, once every argument, both URL schemes and dest's
    writability are checked; IngestError naming what is wrong. The caller closes the source."""
    _check_arguments(fmt, resolution, shard_mb, max_member_mb)
    _check_scheme(str(src), "source")
    _check_scheme(dest, "destination")
    _check_writable(dest)
    try:
        labels = read_labels(labels_file, labels_encoding) if labels_file else None
    except LabelsError as err:
        raise IngestError(str(err)) from None
    try:
        return labels, open_source(src, member_limit(max_member_mb))
    except SourceError as err:
        raise IngestError(str(err)) from None


def member_limit(max_member_mb: float) -> int:
    """The largest source member read, in bytes."""
    return max(1, int(max_member_mb * 2 ** 20))


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
    labels, source = open_inputs(src, dest, labels_file, resolution, fmt, shard_mb, labels_encoding, max_member_mb)
    try:
        report = _ingest(source, Destination(dest), labels, _Job(resolution, fmt, shard_mb, workers,
                                                                 max_member_mb, labels_file, compose_captions),
                         progress)
    finally:
        source.close()
    _write_report(dest, report)
    if not report.ingested:
        raise IngestError(f"nothing ingested from {src}: {len(report.skipped)} files skipped "
                          f"(see {join(dest, 'ingest_report.json')})")
    return report


def _check_arguments(fmt: str, resolution: int | None, shard_mb: float, max_member_mb: float) -> None:
    if fmt not in ("png", "jpg"):
        raise IngestError(f"--format must be png or jpg, got {fmt!r}")
    if resolution is not None and resolution < 1:
        raise IngestError(f"--resolution must be positive, got {resolution}")
    if not shard_mb > 0:
        raise IngestError(f"--shard-mb must be positive, got {shard_mb}")
    if not max_member_mb > 0:
        raise IngestError(f"--max-member-mb must be positive, got {max_member_mb}")


@dataclass
class _Job:
    resolution: int | None
    fmt: str
    shard_mb: float
    workers: int
    max_member_mb: float
    labels_file: str | Path | None
    compose_captions: bool = False

    def label(self, labels: dict[str, Label] | None, rel: str) -> Label | None:
        """rel's label; with compose_captions, a caption composed from its tags where it has none."""
        label = labels.get(rel) if labels is not None else None
        if self.compose_captions and label is not None and label.tags and not label.caption:
            label = Label(label.tags, compose_caption(label.tags, rel))
        return label


def _candidates(source: Source, labels: dict[str, Label] | None, labels_file, report: IngestReport) -> list[str]:
    """The image members to process, in order; everything else goes into the report with its reason."""
    for name, reason in source.refused:
        report.skip(name, reason)
    labels_name = Path(labels_file).name if labels_file else None
    names = [n for n in source.names if not (n in ("labels.csv", "labels.json") and
                                              (labels_name is None or n == labels_name))]
    if labels is not None:
        for name in sorted(set(labels) - set(names)):
            report.skip(name, "listed in labels but no such file")
    candidates = []
    for name in names:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            report.skip(name, f"not an image file (suffix {suffix or 'none'})")
        elif labels is not None and name not in labels:
            report.skip(name, "no label for this file")
        else:
            candidates.append(name)
    return candidates


def _read_all(source: Source, candidates: list[str], job: _Job, report: IngestReport) -> Iterator[tuple]:
    for name in candidates:
        try:
            data = source.read(name)
        except MemberRefused as err:
            data = None
            report.skip(name, str(err))
        except Exception as err:  # noqa: BLE001 - an unreadable member is skipped, not fatal
            data = None
            report.skip(name, f"cannot read ({type(err).__name__}: {err})")
        if data is not None:
            yield name, data, job.resolution, job.fmt


def _ingest(source: Source, dest: Destination, labels: dict[str, Label] | None, job: _Job,
            progress: Callable[[int, int], None] | None) -> IngestReport:
    report = IngestReport()
    candidates = _candidates(source, labels, job.labels_file, report)
    version = dest.begin()
    try:
        writer = ShardWriter(dest, version, job.fmt, job.shard_mb)
        resolution = job.resolution
        budget = max(256 * 2 ** 20, int(2 * job.max_member_mb * 2 ** 20))
        for done, (rel, result, err) in enumerate(_processed(_read_all(source, candidates, job, report),
                                                             job.workers, budget), 1):
            if err:
                report.skip(rel, err)
            else:
                data, res = result
                resolution = resolution or res
                if res != resolution:
                    report.skip(rel, f"resolution {res} differs from the dataset's {resolution}; pass --resolution")
                else:
                    writer.add(rel, data, job.label(labels, rel))
                    report.ingested += 1
            if progress:
                progress(done, len(candidates))
        if report.ingested:
            report.manifest = writer.manifest(resolution)
            report.removed, note = dest.publish(report.manifest, version)
            report.version, report.notes = version, [note] if note else []
        else:
            dest.abandon(version)
    except BaseException:
        dest.abandon(version)  # the published dataset was never touched; only this version's folder goes
        raise
    return report


def _write_report(dest: str, report: IngestReport) -> None:
    fs, root = open_filesystem(dest)
    with fs.open(f"{root}/ingest_report.json", "wb") as fh:
        fh.write(report.to_json().encode())
