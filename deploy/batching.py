"""One forward pass for several requests: their input rows concatenated, the images split back.

Requests prepared against different versions (a swap happened between them) run per version.
"""
from __future__ import annotations

import numpy as np
import torch

from deploy.request import Prepared
from trainers.sampling import run_packed


def run_batch(items: list[Prepared], rows_per_pass: int = 64) -> list[np.ndarray]:
    """Images (uint8 NxHxWx3) for each item, in order; rows of one version share forward passes."""
    results: list[np.ndarray | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(id(item.model), []).append(i)
    for indices in groups.values():
        model = items[indices[0]].model
        rows = torch.cat([items[i].rows for i in indices])
        images = run_packed(model.generator, rows, batch=rows_per_pass, device=model.device)
        start = 0
        for i in indices:
            results[i] = images[start:start + items[i].n]
            start += items[i].n
    return results  # type: ignore[return-value]
