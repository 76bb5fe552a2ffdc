"""``ganray data ingest SRC DEST --ray``: the decode and resize as Ray tasks over the cluster's CPUs.

The dataset is the local ingest's (``trainers/data/ingest.py``): the same candidates, the same
per-image processing (``_process``), the same sample keys, labels, resolution rule, manifest
and dataset hash; only the shard layout differs. The driver lists SRC, reads the labels, picks
the resolution (``--resolution``, else the first image that decodes, as the local ingest does)
and opens a version folder at DEST. Each task takes a contiguous chunk of candidates, reads
them from SRC itself, processes them and writes its shards into ``<version>/part-NNNNNN/``
with the ``ShardWriter``, then returns what the manifest needs (keys, digests, shard infos).
The driver checks the keys against the local ingest's rule over the whole dataset (a key made
unique within a chunk may collide with one of another chunk; such a shard is rewritten with
the right names), writes the manifest last and collects old versions (``versions.py``).

SRC and DEST must be reachable from every node: a URL (``s3://...``), or ``file:///path`` for a
filesystem mounted on every node; a plain local path is refused. Each task builds its own
filesystem client from its node's environment: no credential travels with a task.
"""
from __future__ import annotations

import hashlib
import io
import math
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from trainers.data.ingest import (IngestError, IngestReport, _candidates, _Job, _process, _write_report, member_limit,
                                  open_inputs)
from trainers.data.labels import Label
from trainers.data.manifest import Manifest, ShardInfo, content_hash, top_tag_sets
from trainers.data.sources import (ARCHIVE_SUFFIXES, DEFAULT_MAX_MEMBER_MB, FolderSource, FsspecFolderSource,
                                   MemberRefused, open_source)
from trainers.data.storage import join, open_filesystem
from trainers.data.versions import Destination
from trainers.data.writer import ShardWriter, key_for
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
    labels, source = open_inputs(src, dest, labels_file, resolution, fmt, shard_mb, labels_encoding, max_member_mb)
    limit = member_limit(max_member_mb)
    report = IngestReport()
    try:
        names = _candidates(source, labels, labels_file, report)
        expected = resolution or _first_resolution(source, names, fmt)
    finally:
        source.close()
    job = _Job(resolution, fmt, shard_mb, 1, max_member_mb, labels_file, compose_captions)
    plan = _Plan(src, dest, names, [job.label(labels, n) for n in names], expected, job, limit)
    _run(plan, report, progress, ray_address)
    _write_report(dest, report)
    if not report.ingested:
        raise IngestError(f"nothing ingested from {src}: {len(report.skipped)} files skipped "
                          f"(see {join(dest, 'ingest_report.json')})")
    return report


def _first_resolution(source, names: list[str], fmt: str) -> int | None:
    """The resolution of the first candidate that decodes (the local ingest's rule without --resolution)."""
    for name in names:
        try:
            data = source.read(name)
        except Exception:  # noqa: BLE001 - skipped later, by its task, with the reason
            continue
        _, result, err = _process((name, data, None, fmt))
        if not err:
            return result[1]
    return None


class _Plan:
    """Everything the tasks and the driver's assembly share."""

    def __init__(self, src: str, dest: str, names: list[str], labels: list[Label | None], expected: int | None,
                 job: _Job, limit: int):
        self.src, self.dest, self.names, self.labels, self.expected = src, dest, names, labels, expected
        self.resolution, self.fmt, self.shard_mb, self.limit = job.resolution, job.fmt, job.shard_mb, limit

    def chunks(self, cpus: float) -> list[list[tuple[int, str, dict | None]]]:
        n = len(self.names)
        size = min(CHUNK_MAX, max(CHUNK_MIN, math.ceil(n / max(1.0, cpus * TASKS_PER_CPU))))
        items = [(i, name, asdict(label) if label is not None else None)
                 for i, (name, label) in enumerate(zip(self.names, self.labels))]
        return [items[i:i + size] for i in range(0, n, size)]

    def task_args(self, version: str, part: int, chunk: list) -> dict[str, Any]:
        return {"src": self.src, "dest": self.dest, "folder": f"{version}/part-{part:06d}", "items": chunk,
                "resolution": self.resolution, "expected": self.expected, "fmt": self.fmt,
                "shard_mb": self.shard_mb, "limit": self.limit}


# -- inside a task ---------------------------------------------------------------------------

class _PartDestination(Destination):
    """A task's view of DEST: its shards go into its part folder; the version's heartbeat is the driver's."""

    def beat(self, version: str, force: bool = False) -> None:
        if self.local:
            self.fs.makedirs(self.path(version), exist_ok=True)


def _unlisted(cls, **attrs):
    """A source that reads members by name without listing SRC again (its constructor lists all of it)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(attrs, names=[], refused=[])
    return obj


def _member_reader(src: str, limit: int):
    text = str(src)
    if text.lower().endswith(".zip"):
        return open_source(text, limit)  # reads the zip's directory, then members by range
    if text.startswith("file://"):
        root = Path(text[len("file://"):])
        return _unlisted(FolderSource, root=root, real_root=root.resolve(), limit=limit)
    fs, root = open_filesystem(text)
    return _unlisted(FsspecFolderSource, fs=fs, root=root.rstrip("/"), limit=limit)


def _one(reader, name: str, args: dict[str, Any]) -> tuple[str | None, bytes | None]:
    """(None, processed image) or (the reason it is skipped, None), as the local ingest decides."""
    try:
        data = reader.read(name)
    except MemberRefused as err:
        return str(err), None
    except Exception as err:  # noqa: BLE001 - an unreadable member is skipped, not fatal
        return f"cannot read ({type(err).__name__}: {err})", None
    _, result, err = _process((name, data, args["resolution"], args["fmt"]))
    if err:
        return err, None
    image, res = result
    if args["expected"] is not None and res != args["expected"]:
        return f"resolution {res} differs from the dataset's {args['expected']}; pass --resolution", None
    return None, image


def ingest_chunk(args: dict[str, Any]) -> dict[str, Any]:
    """One task: a chunk of candidates read, processed and written into shards in its part folder.

    Returns, per sample written, (index, key, image sha256, label text, shard number in the part),
    the skipped (index, name, reason), the part's shard infos and its tag counts."""
    reader = _member_reader(args["src"], args["limit"])
    writer = ShardWriter(_PartDestination(args["dest"]), args["folder"], args["fmt"], args["shard_mb"])
    accepted, skipped = [], []
    try:
        for index, name, label in args["items"]:
            reason, image = _one(reader, name, args)
            if reason is not None:
                skipped.append((index, name, reason))
                continue
            shard = len(writer.shards)
            writer.add(name, image, Label(**label) if label is not None else None)
            key, digest, text = writer.hash_items[-1]
            accepted.append((index, key, digest, text, shard))
        writer.flush()
    finally:
        reader.close()
    return {"accepted": accepted, "skipped": skipped, "shards": [asdict(s) for s in writer.shards],
            "tags": writer.tag_counts, "tag_sets": writer.tag_set_counts}


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
    skipped = sorted(s for r in results for s in r["skipped"])
    for _, name, reason in skipped:
        report.skip(name, reason)
    shards = [[ShardInfo(**s) for s in r["shards"]] for r in results]
    used: set[str] = set()
    items, renames, tags, tag_sets = [], {}, {}, {}
    for part, r in enumerate(results):
        for index, key, digest, text, shard in r["accepted"]:  # chunks are contiguous: this is candidate order
            exact = key_for(plan.names[index], used)
            if exact != key:
                renames.setdefault((part, shard), {})[key] = exact
            items.append((exact, digest, text))
        for tag, n in r["tags"].items():
            tags[tag] = tags.get(tag, 0) + n
        for combo, n in r["tag_sets"].items():
            tag_sets[combo] = tag_sets.get(combo, 0) + n
    for (part, shard), mapping in renames.items():
        shards[part][shard] = _rekey(dest, shards[part][shard], mapping)
    report.ingested = len(items)
    if not items:
        dest.abandon(version)
        return
    flat = [s for part in shards for s in part]
    report.manifest = Manifest(num_samples=sum(s.samples for s in flat), resolution=plan.expected,
                               image_format=plan.fmt, shards=flat, tags=dict(sorted(tags.items())),
                               dataset_hash=content_hash(items, plan.expected), tag_sets=top_tag_sets(tag_sets))
    report.removed, note = dest.publish(report.manifest, version)
    report.version, report.notes = version, [note] if note else []


def _rekey(dest: Destination, info: ShardInfo, mapping: dict[str, str]) -> ShardInfo:
    """Rewrites a shard with some sample keys renamed (members `<key>.<ext>`); same bytes otherwise."""
    raw = dest.fs.cat_file(dest.path(info.path))
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member in src.getmembers():
            key, ext = member.name.split(".", 1)
            data = src.extractfile(member).read()
            new = tarfile.TarInfo(f"{mapping.get(key, key)}.{ext}")
            new.size, new.mtime, new.mode = len(data), 0, 0o644
            tar.addfile(new, io.BytesIO(data))
    data = out.getvalue()
    with dest.fs.open(dest.path(info.path), "wb") as fh:
        fh.write(data)
    return ShardInfo(info.path, info.samples, len(data), hashlib.sha256(data).hexdigest())
