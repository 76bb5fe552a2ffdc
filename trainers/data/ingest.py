"""Ingest: a folder of images (+ labels) -> WebDataset tar shards + manifest.json.

Bad input never stops the run and is never silent: every skipped file is listed
with its reason in ``DEST/ingest_report.json``. The manifest is written last.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image

from trainers.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, content_hash
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


def read_labels(path: str | Path) -> dict[str, Label]:
    """Reads labels: CSV with columns file,tags[,caption] or JSON {file: {tags, caption}}."""
    path = Path(path)
    if not path.exists():
        raise IngestError(f"labels file not found: {path}")
    if path.suffix.lower() == ".json":
        raw = json.loads(path.read_text())
        return {str(k): Label(normalise_tags(v.get("tags", [])), v.get("caption")) for k, v in raw.items()}
    labels = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise IngestError(f"labels CSV {path} needs a `file` column (got {reader.fieldnames})")
        for row in reader:
            tags = normalise_tags((row.get("tags") or "").split(","))
            labels[row["file"].strip()] = Label(tags, (row.get("caption") or None))
    return labels


def process_image(data: bytes, resolution: int | None, fmt: str) -> tuple[bytes, int]:
    """Decodes, converts to RGB, centre-crops, resizes (bicubic, antialiased), re-encodes.

    Returns (encoded bytes, resolution). Raises ValueError with the reason on bad input.
    """
    if not data:
        raise ValueError("zero-byte file")
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
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    res = resolution or side
    if side != res:
        img = img.resize((res, res), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    if fmt == "png":
        img.save(out, format="PNG", compress_level=1)
    else:
        img.save(out, format="JPEG", quality=95)
    return out.getvalue(), res


def _list_sources(src: Path) -> list[Path]:
    if not src.exists():
        raise IngestError(f"source not found: {src}")
    if not src.is_dir():
        raise IngestError(f"source must be a folder of images: {src}")
    return sorted(p for p in src.rglob("*") if p.is_file() and p.name not in ("labels.csv", "labels.json"))


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


def ingest(src: str | Path, dest: str, labels_file: str | Path | None = None, resolution: int | None = None,
           fmt: str = "png", shard_mb: float = 64, workers: int = 2,
           progress: Callable[[int, int], None] | None = None) -> IngestReport:
    """Ingests src into dest; returns the report (also written to dest/ingest_report.json)."""
    if fmt not in ("png", "jpg"):
        raise IngestError(f"--format must be png or jpg, got {fmt!r}")
    src = Path(src)
    files = _list_sources(src)
    _check_writable(dest)
    labels = read_labels(labels_file) if labels_file else None
    report = IngestReport()
    rels = [str(p.relative_to(src)) for p in files]
    if labels is not None:
        for name in sorted(set(labels) - set(rels)):
            report.skip(name, "listed in labels but no such file")
    candidates = []
    for path, rel in zip(files, rels):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            report.skip(rel, f"not an image file (suffix {path.suffix or 'none'})")
        elif labels is not None and rel not in labels:
            report.skip(rel, "no label for this file")
        else:
            candidates.append((path, rel))

    def work(item):
        path, rel = item
        try:
            return rel, process_image(path.read_bytes(), resolution, fmt), None
        except ValueError as err:
            return rel, None, str(err)

    processed = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, (rel, result, err) in enumerate(pool.map(work, candidates), 1):
            if err:
                report.skip(rel, err)
            else:
                processed.append((rel, result))
            if progress:
                progress(i, len(candidates))
    if resolution is None and processed:
        resolution = processed[0][1][1]
    items = []
    for rel, (data, res) in processed:
        if res != resolution:
            report.skip(rel, f"resolution {res} differs from the dataset's {resolution}; pass --resolution")
        else:
            items.append((rel, data))
    if not items:
        _write_report(dest, report)
        raise IngestError(f"nothing ingested from {src}: {len(report.skipped)} files skipped "
                          f"(see {join(dest, 'ingest_report.json')})")
    report.manifest = _write_shards(dest, items, labels, resolution, fmt, shard_mb)
    report.ingested = len(items)
    _write_report(dest, report)
    return report


def _write_report(dest: str, report: IngestReport) -> None:
    fs, root = open_filesystem(dest)
    with fs.open(f"{root}/ingest_report.json", "wb") as fh:
        fh.write(report.to_json().encode())


def _write_shards(dest: str, items: list[tuple[str, bytes]], labels: dict[str, Label] | None,
                  resolution: int, fmt: str, shard_mb: float) -> Manifest:
    fs, root = open_filesystem(dest)
    used: set[str] = set()
    shard_limit = max(1, int(shard_mb * 1024 * 1024))
    shards: list[ShardInfo] = []
    tag_counts: dict[str, int] = {}
    hash_items = []
    buf, count = io.BytesIO(), 0
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tf.addfile(info, io.BytesIO(data))

    def flush() -> None:
        nonlocal buf, count, tar
        tar.close()
        data = buf.getvalue()
        name = f"shard-{len(shards):06d}.tar"
        with fs.open(f"{root}/{name}", "wb") as fh:
            fh.write(data)
        shards.append(ShardInfo(name, count, len(data), hashlib.sha256(data).hexdigest()))
        buf, count = io.BytesIO(), 0
        tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)

    for rel, data in items:
        key = _key_for(rel, used)
        label = labels.get(rel) if labels else None
        meta = {"tags": label.tags if label else [], "caption": label.caption if label else None, "source": rel}
        meta_json = json.dumps(meta, sort_keys=True).encode()
        add(tar, f"{key}.{fmt}", data)
        add(tar, f"{key}.json", meta_json)
        count += 1
        for t in meta["tags"]:
            tag_counts[t] = tag_counts.get(t, 0) + 1
        hash_items.append((key, hashlib.sha256(data).hexdigest(), json.dumps(meta["tags"]) + str(meta["caption"])))
        if buf.tell() >= shard_limit:
            flush()
    if count:
        flush()
    manifest = Manifest(num_samples=len(items), resolution=resolution, image_format=fmt, shards=shards,
                        tags=dict(sorted(tag_counts.items())), dataset_hash=content_hash(hash_items, resolution))
    with fs.open(f"{root}/{MANIFEST_NAME}", "wb") as fh:  # last: publishes the dataset
        fh.write(manifest.to_json().encode())
    return manifest
