"""Ingest: a folder, zip or tar of images (+ labels) -> WebDataset tar shards + manifest.json.

Bad input never stops the run and is never silent: every skipped file is listed
with its reason in ``DEST/ingest_report.json``. Images are processed in
``workers`` processes, in order, and written into shards as they come (memory
stays bounded by a shard); the manifest is written last. The dataset hash
depends on the processed images, labels and resolution only.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
import tarfile
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from trainers.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, content_hash
from trainers.data.sources import Source, SourceError, open_source
from trainers.data.storage import join, open_filesystem

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_PIXELS = 64 * 1024 * 1024  # beyond this an image is treated as a decompression bomb


class IngestError(RuntimeError):
    """Ingest cannot run at all (unreachable destination, nothing ingestible)."""


@dataclass
class Label:
    tags: list[str]
    caption: str | None = None


@dataclass
class IngestReport:
    ingested: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    manifest: Manifest | None = None

    def skip(self, file: str, reason: str) -> None:
        self.skipped.append({"file": file, "reason": reason})

    def to_json(self) -> str:
        return json.dumps({"ingested": self.ingested, "skipped": self.skipped}, indent=2)


def normalise_tags(raw: Iterable[str]) -> list[str]:
    """Strips and lower-cases tags, keeping inner spaces ("Blonde  Hair" -> "blonde hair")."""
    out = []
    for t in raw:
        t = re.sub(r"\s+", " ", str(t)).strip().lower()
        if t and t not in out:
            out.append(t)
    return out


def _label(value: object, where: str) -> Label:
    if isinstance(value, list):
        return Label(normalise_tags(value))
    if not isinstance(value, dict):
        raise IngestError(f"labels {where}: expected an object with tags and caption, got {type(value).__name__}")
    tags = value.get("tags") or []
    tags = tags.split(",") if isinstance(tags, str) else tags
    caption = value.get("caption")
    return Label(normalise_tags(tags), str(caption) if caption not in (None, "") else None)


def read_labels(path: str | Path) -> dict[str, Label]:
    """Reads labels: CSV with columns file,tags[,caption] or JSON {file: {tags, caption}}.

    Keys are relative POSIX paths inside the source; tags are stripped and lower-cased.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"labels file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise IngestError(f"labels file {path} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise IngestError(f"labels file {path} must be a JSON object {{file: {{tags, caption}}}}")
        return {posixpath.normpath(str(k)): _label(v, f"{path}[{k!r}]") for k, v in raw.items()}
    labels = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise IngestError(f"labels CSV {path} needs a `file` column (got {reader.fieldnames})")
        for row in reader:
            name = (row.get("file") or "").strip()
            if name:
                tags = normalise_tags((row.get("tags") or "").split(","))
                labels[posixpath.normpath(name)] = Label(tags, (row.get("caption") or "").strip() or None)
    return labels


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


def _key_for(rel: str, used: set[str]) -> str:
    key = re.sub(r"[^A-Za-z0-9_-]", "_", str(Path(rel).with_suffix("")))
    base, n = key, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


def _process(item: tuple[str, bytes, int | None, str]) -> tuple[str, tuple[bytes, int] | None, str | None]:
    rel, data, resolution, fmt = item
    try:
        return rel, process_image(data, resolution, fmt), None
    except ValueError as err:
        return rel, None, str(err)
    except Exception as err:  # noqa: BLE001 - one bad file never stops the run
        return rel, None, f"cannot process image ({type(err).__name__}: {err})"


def _processed(items: Iterator[tuple[str, bytes, int | None, str]], workers: int) -> Iterator[tuple]:
    """_process over items, in order, in `workers` processes (in this one for workers <= 1), bounded in flight."""
    if workers <= 1:
        yield from map(_process, items)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(_process, item))
            if len(pending) >= workers * 16:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _ShardWriter:
    """Writes samples into tar shards of about shard_mb and keeps what the manifest needs."""

    def __init__(self, dest: str, fmt: str, shard_mb: float):
        self.fs, self.root = open_filesystem(dest)
        self.fmt, self.limit = fmt, max(1, int(shard_mb * 1024 * 1024))
        self.shards: list[ShardInfo] = []
        self.tag_counts: dict[str, int] = {}
        self.hash_items: list[tuple[str, str, str]] = []
        self.used: set[str] = set()
        self._new()

    def _new(self) -> None:
        self.buf, self.count = io.BytesIO(), 0
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, rel: str, data: bytes, label: Label | None) -> None:
        key = _key_for(rel, self.used)
        meta = {"tags": label.tags if label else [], "caption": label.caption if label else None, "source": rel}
        self._add(f"{key}.{self.fmt}", data)
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self.count += 1
        for t in meta["tags"]:
            self.tag_counts[t] = self.tag_counts.get(t, 0) + 1
        self.hash_items.append((key, hashlib.sha256(data).hexdigest(), json.dumps(meta["tags"]) + str(meta["caption"])))
        if self.buf.tell() >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        self.tar.close()
        data = self.buf.getvalue()
        name = f"shard-{len(self.shards):06d}.tar"
        with self.fs.open(f"{self.root}/{name}", "wb") as fh:
            fh.write(data)
        self.shards.append(ShardInfo(name, self.count, len(data), hashlib.sha256(data).hexdigest()))
        self._new()

    def publish(self, resolution: int) -> Manifest:
        """Writes the last shard, then the manifest (last: it publishes the dataset)."""
        self.flush()
        manifest = Manifest(num_samples=sum(s.samples for s in self.shards), resolution=resolution,
                            image_format=self.fmt, shards=self.shards, tags=dict(sorted(self.tag_counts.items())),
                            dataset_hash=content_hash(self.hash_items, resolution))
        with self.fs.open(f"{self.root}/{MANIFEST_NAME}", "wb") as fh:
            fh.write(manifest.to_json().encode())
        return manifest


def ingest(src: str | Path, dest: str, labels_file: str | Path | None = None, resolution: int | None = None,
           fmt: str = "png", shard_mb: float = 64, workers: int = 2,
           progress: Callable[[int, int], None] | None = None) -> IngestReport:
    """Ingests src (folder, .zip, .tar or fsspec URL) into dest; returns the report.

    The report is also written to dest/ingest_report.json. Raises IngestError
    when dest is unreachable or unwritable (before any work), when the source
    cannot be opened, or when nothing could be ingested.
    """
    if fmt not in ("png", "jpg"):
        raise IngestError(f"--format must be png or jpg, got {fmt!r}")
    if resolution is not None and resolution < 1:
        raise IngestError(f"--resolution must be positive, got {resolution}")
    _check_writable(dest)
    labels = read_labels(labels_file) if labels_file else None
    try:
        source = open_source(src)
    except SourceError as err:
        raise IngestError(str(err)) from None
    try:
        report = _ingest(source, dest, labels, resolution, fmt, shard_mb, workers, progress, labels_file)
    finally:
        source.close()
    _write_report(dest, report)
    if not report.ingested:
        raise IngestError(f"nothing ingested from {src}: {len(report.skipped)} files skipped "
                          f"(see {join(dest, 'ingest_report.json')})")
    return report


def _ingest(source: Source, dest: str, labels: dict[str, Label] | None, resolution: int | None, fmt: str,
            shard_mb: float, workers: int, progress: Callable[[int, int], None] | None,
            labels_file: str | Path | None) -> IngestReport:
    report = IngestReport()
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

    def items() -> Iterator[tuple[str, bytes, int | None, str]]:
        for name in candidates:
            try:
                data = source.read(name)
            except Exception as err:  # noqa: BLE001 - an unreadable member is skipped, not fatal
                data = None
                report.skip(name, f"cannot read ({type(err).__name__}: {err})")
            if data is not None:
                yield name, data, resolution, fmt

    writer = _ShardWriter(dest, fmt, shard_mb)
    done = 0
    for rel, result, err in _processed(items(), workers):
        done += 1
        if err:
            report.skip(rel, err)
        else:
            data, res = result
            if resolution is None:
                resolution = res
            if res != resolution:
                report.skip(rel, f"resolution {res} differs from the dataset's {resolution}; pass --resolution")
            else:
                writer.add(rel, data, labels.get(rel) if labels is not None else None)
                report.ingested += 1
        if progress:
            progress(done, len(candidates))
    if report.ingested:
        report.manifest = writer.publish(resolution)
    return report


def _write_report(dest: str, report: IngestReport) -> None:
    fs, root = open_filesystem(dest)
    with fs.open(f"{root}/ingest_report.json", "wb") as fh:
        fh.write(report.to_json().encode())
