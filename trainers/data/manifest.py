"""The dataset manifest: what an ingested dataset holds, published last.

A reader trusts only what the manifest lists, so a half-written dataset (shards
without a manifest) is never visible.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the dataset root
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
    format_version: int = FORMAT_VERSION

    @property
    def vocabulary(self) -> list[str]:
        return sorted(self.tags)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> "Manifest":
        try:
            raw = json.loads(text)
            if raw.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
            shards = [ShardInfo(**s) for s in raw.pop("shards")]
            return cls(shards=shards, **raw)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{where} is not a valid ganray manifest: {err}") from None


def content_hash(items: list[tuple[str, bytes, str]], resolution: int) -> str:
    """Dataset hash from (key, processed image bytes' digest, label JSON) in key order.

    It depends on content alone: not on shard size, worker count or file times.
    """
    h = hashlib.sha256(f"ganray-dataset-v{FORMAT_VERSION}:{resolution}\n".encode())
    for key, digest, label in sorted(items):
        h.update(f"{key}\0{digest}\0{label}\n".encode())
    return h.hexdigest()
