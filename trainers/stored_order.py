"""Whole-dataset reads in stored order (for evaluation statistics, judges and sample grids).

Training reads go through ``ShardStream`` with its seeded order and state (``trainers/data``);
these reads use a separate, unshuffled stream that decodes in threads and is closed after
use, so they never touch the training stream's position.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from trainers.data.stream.shard_stream import ShardStream


def iter_samples(url: str, limit: int | None = None) -> Iterator[dict]:
    """The dataset's samples (dicts with ``image`` uint8 HxWx3 and ``tags``) in stored order, at most limit."""
    stream = ShardStream(url, shuffle=False, decode_workers=0)
    try:
        for i, sample in enumerate(stream):
            if limit is not None and i >= limit:
                break
            yield sample
    finally:
        stream.close()


def read_images(url: str, limit: int | None = None) -> tuple[np.ndarray, list[list[str]]]:
    """(uint8 NxHxWx3 images, tag lists) of the first `limit` samples in stored order."""
    images, tags = [], []
    for sample in iter_samples(url, limit):
        images.append(sample["image"])
        tags.append(list(sample["tags"]))
    return np.stack(images), tags
