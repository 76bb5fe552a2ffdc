"""Datasets: ingest into WebDataset shards + manifest, and ``ShardStream`` to read them back.

Exports are resolved lazily, so a decode process that imports
``trainers.data.decode`` does not pay for fsspec and s3fs.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ShardStream": "trainers.data.stream",
    "batches": "trainers.data.stream",
    "torch_batches": "trainers.data.stream",
    "read_manifest": "trainers.data.stream",
    "DataError": "trainers.data.errors",
    "Manifest": "trainers.data.manifest",
    "ingest": "trainers.data.ingest",
    "IngestError": "trainers.data.ingest",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainers.data' has no attribute {name!r}")
