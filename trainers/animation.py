"""Frames as the bytes of a looping animation through Pillow, shared by ``ganray generate --walk`` and the
server's ``POST /walk``: WebP lossless (every frame's pixels kept), GIF quantised to 256 colours per frame.
Both encoders keep identical consecutive frames as one frame shown for their time together (the
animation's length stays frames / fps)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

ANIMATION_TYPES = {"webp": "image/webp", "gif": "image/gif"}


def encode_animation(frames: np.ndarray, fmt: str, fps: int) -> bytes:
    """frames (uint8 FxHxWx3) as a looping animation in fmt ("webp" or "gif"), fps frames per second."""
    images = [Image.fromarray(frame) for frame in frames]
    buf = io.BytesIO()
    options = {"save_all": True, "append_images": images[1:], "duration": max(1, round(1000 / fps)), "loop": 0}
    if fmt == "webp":
        images[0].save(buf, format="WEBP", lossless=True, quality=100, method=0, **options)
    elif fmt == "gif":
        images[0].save(buf, format="GIF", optimize=False, **options)
    else:
        raise ValueError(f"unknown animation format {fmt!r}")
    return buf.getvalue()
