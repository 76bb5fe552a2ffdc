"""Decoding encoded images into uint8 H×W×3 arrays, fast, and the decode worker process.

A sample's bytes are untrusted: only PNG and JPEG (what ingest writes) are
decoded, and with the dataset's resolution given, the size is read from the
header and checked before any pixel memory is allocated (a PNG claiming
60000×60000 costs a header read, not gigabytes). Anything else raises
ValueError naming the cause, which the pipeline counts and skips.

``decode_image`` takes a shortcut for the images ganray's ingest writes (baseline
3-channel JPEG or 8-bit RGB non-interlaced PNG of the dataset's resolution): it
hands the bytes straight to Pillow's C decoder, skipping the Python header
parsing of ``Image.open``, which costs as much as the decoding itself at 64×64.
Other PNGs and JPEGs (and anything the shortcut cannot finish) go through
``Image.open`` restricted to those two formats, whose size is checked again
before decoding (Pillow reads the last frame header of a JPEG, the shortcut the
first), and a broken one raises.

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
_FORMATS = ("PNG", "JPEG")  # what ingest writes; Image.open tries no other plugin


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


def _png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) of the PNG's IHDR, or None."""
    if len(data) < 29 or data[12:16] != b"IHDR":
        return None
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return w, h, depth, colour, interlace


def _decode_jpeg_fast(data: bytes, size: int, head: tuple[int, int, int, int]) -> bytes | None:
    if head[0] not in _JPEG_SOF_BASELINE or head[3] != 3:
        return None
    img = Image.core.new("RGB", (size, size))
    decoder = Image._getdecoder("RGB", "jpeg", ("RGB", ""))
    decoder.setimage(img, (0, 0, size, size))
    try:
        n, err = decoder.decode(data)
    finally:
        decoder.cleanup()
    return (_raw_rgb(img, size) or None) if n < 0 and err >= 0 else None


def _decode_png_fast(data: bytes, size: int, head: tuple[int, int, int, int, int]) -> bytes | None:
    if head[2:] != (8, 2, 0):
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


def _check_size(width: int, height: int, size: int) -> None:
    if (width, height) != (size, size):
        raise ValueError(f"image is {width}x{height}, the dataset's resolution is {size}")


def _fast(data: bytes, size: int) -> bytes | None:
    """The shortcut's packed RGB bytes, or None to go through Image.open. ValueError for a sample that is
    not a PNG or JPEG, or whose header says another size."""
    jpeg = data[:2] == b"\xff\xd8"
    if not jpeg and data[:8] != _PNG_SIGNATURE:
        raise ValueError(f"not a PNG or JPEG (the formats ingest writes): it starts with {bytes(data[:8])!r}")
    head = _jpeg_header(data) if jpeg else _png_header(data)
    if head is None:  # a header this parser does not follow: Image.open reads it, and checks the size
        return None
    width, height = (head[2], head[1]) if jpeg else (head[0], head[1])
    _check_size(width, height, size)
    try:
        return _decode_jpeg_fast(data, size, head) if jpeg else _decode_png_fast(data, size, head)
    except (OSError, ValueError, struct.error):
        return None


def _decode_with_pillow(data: bytes, size: int | None) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data), formats=_FORMATS)  # reads the header only
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for bad bytes
        raise ValueError(f"cannot decode image: {type(err).__name__}: {err}") from None
    with img:
        if size:
            _check_size(*img.size, size)  # the size Pillow would decode (a JPEG's last frame header)
        try:
            return np.asarray(img.convert("RGB"))
        except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for bad bytes
            raise ValueError(f"cannot decode image: {type(err).__name__}: {err}") from None


def decode_raw(data: bytes, size: int | None = None) -> bytes | np.ndarray:
    """The fast path's packed RGB bytes for a size×size image, else a uint8 H×W×3 array via Image.open.

    Only PNG and JPEG are decoded; with ``size``, one whose header says another size is refused
    before decoding. Raises ValueError (naming the cause) for an image that cannot be decoded.
    """
    fast = _fast(data, size) if size else None
    return fast if fast is not None else _decode_with_pillow(data, size)


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """uint8 H×W×3 array of an encoded PNG or JPEG.

    With ``size`` the image must be size×size (checked from the header first) and the fast
    path is tried; raises ValueError (naming the cause) for an image that cannot be decoded.
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
                spans: np.ndarray, size: int) -> list[tuple[int, str]]:
    """Decodes sample i (image bytes at offset spans[i, 0], size spans[i, 1] of staged shard
    paths[shard_of[i]]) into out[i].

    Returns (i, reason) for every sample that is corrupt (not a PNG or JPEG of size×size, or
    undecodable): the caller skips those. Raises DataError when a staged shard is gone.
    """
    flat = out.reshape(len(out), -1)
    corrupt = []
    for i, (s, (off, n)) in enumerate(zip(shard_of, spans[:, :2].tolist())):
        block = views.get(paths[s], names[s])
        try:
            arr = decode_raw(block[off:off + n], size)
        except ValueError as err:
            corrupt.append((i, str(err)))
            continue
        if isinstance(arr, bytes):
            flat[i] = np.frombuffer(arr, np.uint8)
        elif arr.shape == (size, size, 3):
            out[i] = arr
        else:
            corrupt.append((i, f"image is {arr.shape[1]}x{arr.shape[0]}, the dataset's resolution is {size}"))
    return corrupt


def worker_main(conn: Any, shm_path: str, shm_bytes: int) -> None:
    """A decode process: attach the output block, then decode tasks until told to stop.

    A task is the pickle of (offset, size, paths, names, shard_of, spans); the
    answer is the pickle of (the corrupt samples' (index, reason) list, None) or
    (None, the reason the task failed).
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
            answer = (decode_task(out, views, paths, names, shard_of, spans, size), None)
        except DataError as err:
            answer = (None, str(err))
        del out
        try:
            conn.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            break
    views.close()
    del buf
    block.close()
