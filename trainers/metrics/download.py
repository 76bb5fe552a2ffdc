"""A file fetched once into a cache folder and checked by the sha256 prefix its name carries (torch hub's rule).

:func:`fetch` keeps ``folder/<name>``, ``<name>`` the URL's last path segment, which must read
``<stem>-<8 or more hex digits>.<ext>`` (``pt_inception-2015-12-05-6726825d.pth``): the file counts
only when its sha256 starts with those digits. A file already there that passes is reused without a
request. Otherwise the body is streamed into a temporary file in the same folder, bounded
(``max_bytes``: a larger ``Content-Length`` is refused unread, a body that grows past it is cut),
checked (its length against ``Content-Length``, its digest against the prefix), fsynced and renamed
over the name, so the name only ever holds a whole, checked file; any failure removes the temporary
file. Only http(s) URLs; redirects are followed.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from trainers.errors import GanrayError

MAX_BYTES = 200 * 10 ** 6
CHUNK = 1 << 20
TIMEOUT_S = 60.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


class DownloadError(GanrayError):
    """A download that failed or did not check out; the message says why (the caller says what to do)."""


def file_name(url: str) -> tuple[str, str]:
    """(the file's name, the sha256 prefix the name carries) from the URL's last path segment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"{url!r} is not an http(s) URL")
    name = unquote(parts.path.rsplit("/", 1)[-1])
    found = _HASH_IN_NAME.search(name) if _NAME.fullmatch(name) else None
    if found is None:
        raise DownloadError(f"{url}: the file name {name!r} carries no sha256 prefix (NAME-<8 or more hex "
                            "digits>.EXT, as torch hub names its files), so the download could not be checked")
    return name, found.group(1)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, folder: str | Path, max_bytes: int = MAX_BYTES, timeout_s: float = TIMEOUT_S) -> Path:
    """``folder/<name>``: reused when its digest checks, else downloaded, checked and renamed into place."""
    name, prefix = file_name(url)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    if dest.is_file() and file_sha256(dest).startswith(prefix):
        return dest
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, max_bytes, timeout_s)
            out.flush()
            os.fsync(out.fileno())
        if not digest.startswith(prefix):
            raise DownloadError(f"{url}: the body's sha256 is {digest[:16]}..., not the {prefix}... its name carries")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    return dest


def _stream(url: str, out, max_bytes: int, timeout_s: float) -> str:
    """Writes the body of url to out and returns its sha256; DownloadError for an error, a body past
    max_bytes or one shorter than its Content-Length."""
    h, got, expected = hashlib.sha256(), 0, None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "ganray"})
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310 - scheme checked above
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            if expected is not None and expected > max_bytes:
                raise DownloadError(f"{url}: Content-Length {expected} is past the {max_bytes}-byte bound")
            while chunk := resp.read(CHUNK):
                got += len(chunk)
                if got > max_bytes:
                    raise DownloadError(f"{url}: the body is past the {max_bytes}-byte bound")
                h.update(chunk)
                out.write(chunk)
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, HTTPError, timeouts, resets
        raise DownloadError(f"{url}: {type(err).__name__}: {err}") from None
    if expected is not None and got != expected:
        raise DownloadError(f"{url}: the body ended after {got} of the {expected} bytes its Content-Length announced")
    return h.hexdigest()


def _fsync_folder(folder: Path) -> None:
    """Makes the rename durable (where the platform lets a folder be fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
