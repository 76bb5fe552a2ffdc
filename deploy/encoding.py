"""The bytes of an answer: a PNG grid (cells of the model's resolution) or an .npz of the arrays; a walk's
frames as an animated WebP or GIF."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

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


ANIMATION_TYPES = {"webp": "image/webp", "gif": "image/gif"}


def encode_animation(frames: np.ndarray, fmt: str, fps: int) -> bytes:
    """frames (uint8 FxHxWx3) as an animation that loops: webp lossless (every frame's pixels kept), gif
    (a palette per frame); fps frames per second."""
    images = [Image.fromarray(frame) for frame in frames]
    buf = io.BytesIO()
    options = {"save_all": True, "append_images": images[1:], "duration": round(1000 / fps), "loop": 0}
    if fmt == "webp":
        images[0].save(buf, format="WEBP", lossless=True, quality=100, method=0, **options)
    elif fmt == "gif":
        images[0].save(buf, format="GIF", optimize=False, **options)
    else:
        raise ValueError(f"unknown animation format {fmt!r}")
    return buf.getvalue()
