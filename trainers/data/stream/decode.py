"""Decoding encoded images into uint8 H×W×3 arrays, fast, and the decode worker process.

``decode_image`` takes a shortcut for the images ganray's ingest writes (baseline
3-channel JPEG or 8-bit RGB non-interlaced PNG of the dataset's resolution): it
reads the size from the header itself and hands the bytes straight to Pillow's
C decoder, skipping the Python header parsing of ``Image.open``, which costs as
much as the decoding itself at 64×64. Anything else (and anything the shortcut
cannot finish) goes through ``Image.open`` as usual, so any image Pillow reads
is read, and a broken one raises.

``worker_main`` is the body of a decode process: it maps the shards staged by
the reader (files in /dev/shm or a temp folder), decodes batches of samples
(given as byte spans) into a shared memory block (one slot per batch) and
answers when done. It imports nothing but numpy and Pillow, so it
starts fast, and the reading process never touches the image bytes.
"""
from __future__ import annotations

import io
import json
import mmap
import os
import pickle
import struct
from typing import Any

import numpy as np
from PIL import Image

from trainers.data.errors import DataError

_JPEG_SOF_BASELINE = (0xC0, 0xC1)
_JPEG_NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(marker, height, width, components) of the JPEG's frame header, or None."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return marker, h, w, data[i + 9]
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _raw_rgb(img: Any, size: int) -> bytes:
    encoder = Image._getencoder("RGB", "raw", ("RGB",))
    encoder.setimage(img, (0, 0, size, size))
    _, err, raw = encoder.encode(size * size * 3 + 64)
    return raw if err >= 0 and len(raw) == size * size * 3 else b""


def _decode_jpeg_fast(data: bytes, size: int) -> bytes | None:
    head = _jpeg_header(data)
    if head is None or head[0] not in _JPEG_SOF_BASELINE or head[1:] != (size, size, 3):
        return None
    img = Image.core.new("RGB", (size, size))
    decoder = Image._getdecoder("RGB", "jpeg", ("RGB", ""))
    decoder.setimage(img, (0, 0, size, size))
    try:
        n, err = decoder.decode(data)
    finally:
        decoder.cleanup()
    return (_raw_rgb(img, size) or None) if n < 0 and err >= 0 else None


def _decode_png_fast(data: bytes, size: int) -> bytes | None:
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (w, h, depth, colour, interlace) != (size, size, 8, 2, 0):
        return None
    idat, pos, n = [], 8, len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        elif kind == b"tRNS":  # transparency: let Pillow handle it
            return None
        pos += 12 + length
    if not idat:
        return None
    img = Image.core.new("RGB", (size, size))
    decoder = Image._getdecoder("RGB", "zip", ("RGB",))
    decoder.setimage(img, (0, 0, size, size))
    try:
        n, err = decoder.decode(b"".join(idat))
    finally:
        decoder.cleanup()
    return (_raw_rgb(img, size) or None) if n < 0 and err >= 0 else None


def decode_raw(data: bytes, size: int | None = None) -> bytes | np.ndarray:
    """The fast path's packed RGB bytes for a size×size image, else a uint8 H×W×3 array via Image.open.

    Raises ValueError (naming the cause) for an image that cannot be decoded.
    """
    if size:
        try:
            fast = _decode_jpeg_fast(data, size) if data[:2] == b"\xff\xd8" else _decode_png_fast(data, size)
        except (OSError, ValueError, struct.error):
            fast = None
        if fast is not None:
            return fast
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for bad bytes
        raise ValueError(f"cannot decode image: {type(err).__name__}: {err}") from None


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """uint8 H×W×3 array of an encoded image (any format Pillow reads).

    With ``size`` the fast path is tried for size×size images; raises ValueError
    (naming the cause) for an image that cannot be decoded.
    """
    out = decode_raw(data, size)
    if isinstance(out, bytes):
        return np.frombuffer(out, np.uint8).reshape(size, size, 3).copy()
    return out


def parse_meta(raw: bytes | None) -> tuple[list[str], str | None]:
    """(tags, caption) from a sample's JSON (missing JSON: no tags, no caption)."""
    if not raw:
        return [], None
    meta = json.loads(raw)
    return list(meta.get("tags") or []), meta.get("caption")


class ShardViews:
    """The staged shards a decode worker has mapped; ones the reader has deleted are dropped."""

    def __init__(self) -> None:
        self._open: dict[str, mmap.mmap] = {}

    def get(self, path: str, name: str) -> mmap.mmap:
        block = self._open.get(path)
        if block is None:
            try:
                with open(path, "rb") as fh:
                    block = self._open[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as err:
                raise DataError(f"shard {name}: its staged copy is gone ({err})") from None
        return block

    def forget_unlinked(self) -> None:
        for path in list(self._open):
            if not os.path.exists(path):
                self._open.pop(path).close()

    def close(self) -> None:
        for block in self._open.values():
            block.close()
        self._open.clear()


def decode_task(out: np.ndarray, views: ShardViews, paths: list[str], names: list[str], shard_of: list[int],
                spans: np.ndarray, size: int) -> None:
    """Decodes sample i (image bytes at offset spans[i, 0], size spans[i, 1] of staged shard
    paths[shard_of[i]]) into out[i].

    Raises ValueError(i, reason) for the first sample that fails.
    """
    flat = out.reshape(len(out), -1)
    for i, (s, (off, n)) in enumerate(zip(shard_of, spans[:, :2].tolist())):
        try:
            block = views.get(paths[s], names[s])
            arr = decode_raw(block[off:off + n], size)
            if isinstance(arr, bytes):
                flat[i] = np.frombuffer(arr, np.uint8)
            elif arr.shape == (size, size, 3):
                out[i] = arr
            else:
                raise ValueError(f"image is {arr.shape[1]}x{arr.shape[0]}, the dataset's resolution is {size}")
        except (ValueError, DataError) as err:
            raise ValueError(i, str(err)) from None


def worker_main(conn: Any, shm_path: str, shm_bytes: int) -> None:
    """A decode process: attach the output block, then decode tasks until told to stop.

    A task is the pickle of (offset, size, paths, names, shard_of, spans); the
    answer is the pickle of (None, None) or (index, reason).
    """
    fd = os.open(shm_path, os.O_RDWR)
    try:
        block = mmap.mmap(fd, shm_bytes)
    finally:
        os.close(fd)
    buf = np.frombuffer(block, np.uint8)
    views = ShardViews()
    conn.send_bytes(b"ready")
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if not msg:
            break
        offset, size, paths, names, shard_of, spans = pickle.loads(msg)
        out = buf[offset:offset + len(spans) * size * size * 3].reshape(len(spans), size, size, 3)
        views.forget_unlinked()
        try:
            decode_task(out, views, paths, names, shard_of, spans, size)
            answer = (None, None)
        except ValueError as err:
            answer = err.args if len(err.args) == 2 else (0, str(err))
        del out
        try:
            conn.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            break
    views.close()
    del buf
    block.close()
