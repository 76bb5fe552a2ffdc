"""The bytes of an answer: a PNG grid (cells of the model's resolution) or an .npz of the arrays
(a walk's frames as an animation: ``trainers.animation``, shared with ``ganray generate --walk``)."""
from __future__ import annotations

import io

import numpy as np

from trainers.grid import make_grid

MEDIA_TYPES = {"png": "image/png", "npz": "application/octet-stream"}


def encode(images: np.ndarray, fmt: str) -> bytes:
    """png: the images as one grid, as ``ganray generate --out x.png`` writes it; npz: key ``images``,
    uint8 NxHxWx3, as ``--out x.npz``."""
    buf = io.BytesIO()
    if fmt == "png":
        make_grid(images).save(buf, format="PNG")
    elif fmt == "npz":
        np.savez_compressed(buf, images=images)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()
