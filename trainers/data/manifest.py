"""The dataset manifest: what an ingested dataset holds, published last.

A reader trusts only what the manifest lists, so a half-written dataset (shards
without a manifest) is never visible. Reading one is strict: anything that is
not a manifest this code wrote (a list, a missing or ill-typed field, a shard
path that leaves the dataset, a ``dataset_hash`` that is not 64 lowercase hex
digits) is a ManifestError naming the file and the field. The hash goes into cache
paths, so it is never anything but a sha256; a manifest written without one gets
the hash of its shard digests (``shards_hash``), which names its content as well.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from trainers.data.errors import DataError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_TAG_SETS = 4096  # the most frequent distinct tag sets a manifest keeps (what sampling fills tags from)
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch (a `$` would let a trailing newline in)


class ManifestError(DataError, ValueError):
    """A manifest that is not valid; the message names the file and the field."""


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the dataset root ("v-<version>/shard-000000.tar")
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    num_samples: int
    resolution: int
    image_format: str
    shards: list[ShardInfo]
    tags: dict[str, int] = field(default_factory=dict)  # vocabulary with counts, sorted by name
    dataset_hash: str = ""
    # the most frequent distinct tag sets of the samples ("a,b,c": count; tags sorted, joined by ",")
    tag_sets: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def vocabulary(self) -> list[str]:
        return sorted(self.tags)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "manifest") -> "Manifest":
        """The manifest in text; ManifestError (a DataError and a ValueError) naming `where` and the field."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{where} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") \
                from None
        except UnicodeDecodeError as err:
            raise ManifestError(f"{where} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        try:
            return _parse(raw)
        except _Invalid as err:
            raise ManifestError(f"{where} is not a valid ganray manifest: {err}") from None


class _Invalid(Exception):
    pass


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _need(raw: dict, name: str, kind: type, where: str = "", minimum: int | None = None):
    if name not in raw:
        raise _Invalid(f"field `{where}{name}` is missing")
    value = raw[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = "an integer" if kind is int else _kind(kind())
        raise _Invalid(f"field `{where}{name}` must be {expected}, got {_kind(value)} ({value!r:.60})")
    if minimum is not None and value < minimum:
        raise _Invalid(f"field `{where}{name}` must be at least {minimum}, got {value}")
    return value


def _parse(raw: object) -> Manifest:
    if not isinstance(raw, dict):
        raise _Invalid(f"expected a JSON object, got {_kind(raw)}")
    known = {"num_samples", "resolution", "image_format", "shards", "tags", "dataset_hash", "format_version",
             "tag_sets"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _Invalid(f"unknown field `{unknown[0]}`")
    if raw.get("format_version") != FORMAT_VERSION:
        raise _Invalid(f"format_version {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
    shards = [_shard(s, i) for i, s in enumerate(_need(raw, "shards", list))]
    tags = raw.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in tags.values()):
        raise _Invalid(f"field `tags` must be an object of tag counts, got {_kind(tags)}")
    tag_sets = raw.get("tag_sets", {})
    if not isinstance(tag_sets, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in tag_sets.values()):
        raise _Invalid(f"field `tag_sets` must be an object of tag-set counts, got {_kind(tag_sets)}")
    resolution = _need(raw, "resolution", int, minimum=1)
    m = Manifest(num_samples=_need(raw, "num_samples", int, minimum=0), resolution=resolution,
                 image_format=_need(raw, "image_format", str), shards=shards, tags=tags, tag_sets=tag_sets,
                 dataset_hash=_dataset_hash(raw) if "dataset_hash" in raw else shards_hash(shards, resolution))
    if sum(s.samples for s in shards) != m.num_samples:
        raise _Invalid(f"field `num_samples` is {m.num_samples}, the shards hold {sum(s.samples for s in shards)}")
    return m


def _dataset_hash(raw: dict) -> str:
    value = raw["dataset_hash"]
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        shown = repr(value)[:80] if isinstance(value, str) else f"{_kind(value)} ({value!r:.60})"
        raise _Invalid(f"field `dataset_hash` must be 64 lowercase hex digits (a sha256), got {shown}")
    return value


def _shard(raw: object, i: int) -> ShardInfo:
    where = f"shards[{i}]."
    if not isinstance(raw, dict):
        raise _Invalid(f"field `shards[{i}]` must be an object, got {_kind(raw)}")
    unknown = sorted(set(raw) - {"path", "samples", "bytes", "sha256"})
    if unknown:
        raise _Invalid(f"unknown field `{where}{unknown[0]}`")
    path = _need(raw, "path", str, where)
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise _Invalid(f"field `{where}path` must be a plain path inside the dataset, got {path!r}")
    sha = _need(raw, "sha256", str, where)
    if not _SHA256.fullmatch(sha):
        raise _Invalid(f"field `{where}sha256` must be 64 hex digits, got {sha!r:.80}")
    return ShardInfo(path, _need(raw, "samples", int, where, 0), _need(raw, "bytes", int, where, 0), sha)


def tag_set_key(tags: list[str]) -> str:
    """The key of a sample's tag set in ``Manifest.tag_sets``: its tags sorted, joined by ","."""
    return ",".join(sorted(set(tags)))


def top_tag_sets(counts: dict[str, int], limit: int = MAX_TAG_SETS) -> dict[str, int]:
    """The `limit` most frequent tag sets (ties by key), for a manifest."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit])


def shards_hash(shards: list[ShardInfo], resolution: int) -> str:
    """The dataset hash of a manifest written without one: from its shards' paths, sizes and sha256s.

    The shards hold every image and label, so it changes with the content (and, unlike
    ``content_hash``, with the sharding too).
    """
    h = hashlib.sha256(f"ganray-shards-v{FORMAT_VERSION}:{resolution}\n".encode())
    for s in shards:
        h.update(f"{s.path}\0{s.samples}\0{s.bytes}\0{s.sha256}\n".encode())
    return h.hexdigest()


def content_hash(items: list[tuple[str, bytes, str]], resolution: int) -> str:
    """Dataset hash from (key, processed image bytes' digest, label JSON) in key order.

    It depends on content alone: not on shard size, worker count or file times.
    """
    h = hashlib.sha256(f"ganray-dataset-v{FORMAT_VERSION}:{resolution}\n".encode())
    for key, digest, label in sorted(items):
        h.update(f"{key}\0{digest}\0{label}\n".encode())
    return h.hexdigest()
