"""Where ingest reads images from: a folder, a .zip or .tar(.gz|.bz2|.xz), or an fsspec URL of either.

Every source lists relative POSIX names in sorted order and reads one by name.
Members that are never read are listed in ``refused`` with the reason:
archive paths that are absolute or climb out with ``..``; links and devices in
archives; in a folder, symlinks that point out of it (or to a folder, which is
not followed) and anything that is not a regular file; and every member whose
declared size passes ``max_member_bytes``. A member read is read in bounded
chunks and abandoned at the limit (``MemberTooLarge``), so one lying header or a
file that grew since the listing never takes more memory than the limit.
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
import zipfile
from pathlib import Path
from typing import Protocol

from trainers.data.storage import open_filesystem

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
DEFAULT_MAX_MEMBER_MB = 256
CHUNK = 1 << 20


class SourceError(RuntimeError):
    """The source cannot be opened at all."""


class MemberRefused(ValueError):
    """A member found unfit while it was read; the message is the reason to report."""


class MemberTooLarge(MemberRefused):
    """A member passed max_member_bytes while it was read."""


class Source(Protocol):
    names: list[str]  # readable members, sorted
    refused: list[tuple[str, str]]  # (name, reason) of members that are never read

    def read(self, name: str) -> bytes: ...

    def close(self) -> None: ...


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB" if n < 2 ** 30 else f"{n / 2 ** 30:.1f} GB"


def too_large(size: int | None, limit: int) -> str:
    """The reason a member over the limit is skipped (size None: it passed the limit while read)."""
    what = f"{_mb(size)} declared" if size is not None else f"more than {_mb(limit)} when read"
    return f"member too large: {what}, the limit is {_mb(limit)} (--max-member-mb)"


def read_bounded(fh, limit: int) -> bytes:
    """All of fh, read in chunks; MemberTooLarge as soon as it passes limit bytes (never more than limit+1 read)."""
    out, total = io.BytesIO(), 0
    while True:
        chunk = fh.read(min(CHUNK, limit + 1 - total))
        if not chunk:
            return out.getvalue()
        total += len(chunk)
        if total > limit:
            raise MemberTooLarge(too_large(None, limit))
        out.write(chunk)


def unsafe_reason(name: str) -> str | None:
    """Why an archive member's path is refused, or None when it is a plain relative path."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive (refused)"
    if ".." in name.replace("\\", "/").split("/"):
        return "path climbs out of the archive with '..' (refused)"
    return None


class FolderSource:
    """A local folder, walked without following links; a file symlink is read only when it stays inside.

    listed=False: members are read by name and nothing is listed (``member_reader``).
    """

    def __init__(self, root: Path, max_member_bytes: int, listed: bool = True):
        self.root, self.real_root, self.limit = root, root.resolve(), max_member_bytes
        self.names, self.refused = [], []
        for folder, dirs, files in os.walk(root, followlinks=False) if listed else ():
            for entry in sorted(dirs + files):
                path = Path(folder) / entry
                reason = self._refusal(path, entry in dirs)
                if reason == "":
                    continue
                rel = path.relative_to(root).as_posix()
                (self.refused.append((rel, reason)) if reason else self.names.append(rel))
        self.names.sort()
        self.refused.sort()

    def _refusal(self, path: Path, listed_as_dir: bool) -> str | None:
        """None: a file to read; "": a plain folder (walked); else the reason it is refused."""
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(self.real_root):
                return "symlink pointing out of the source folder (refused)"
            if not target.exists():
                return "broken symlink (refused)"
            if target.is_dir():
                return "symlink to a folder (not followed)"
        elif listed_as_dir:
            return ""
        try:
            st = path.stat()
        except OSError as err:
            return f"cannot read ({err.strerror or err})"
        if not path.is_file():
            return "not a regular file: a device, socket or pipe (refused)"
        return too_large(st.st_size, self.limit) if st.st_size > self.limit else None

    def read(self, name: str) -> bytes:
        real = (self.root / name).resolve()
        if not real.is_relative_to(self.real_root):  # changed into an escaping link since the listing
            raise MemberRefused("symlink pointing out of the source folder (refused)")
        with open(real, "rb") as fh:
            return read_bounded(fh, self.limit)

    def close(self) -> None:
        pass


class ZipSource:
    def __init__(self, fileobj, where: str, max_member_bytes: int):
        try:
            self.zf = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError) as err:
            raise SourceError(f"{where} is not a readable zip archive: {err}") from None
        self.limit = max_member_bytes
        self.names, self.refused = [], []
        for info in self.zf.infolist():
            if info.is_dir():
                continue
            reason = unsafe_reason(info.filename)
            if reason is None and info.file_size > self.limit:
                reason = too_large(info.file_size, self.limit)
            (self.refused.append((info.filename, reason)) if reason else self.names.append(info.filename))
        self.names.sort()

    def read(self, name: str) -> bytes:
        with self.zf.open(name) as fh:
            return read_bounded(fh, self.limit)

    def close(self) -> None:
        self.zf.close()


class TarSource:
    def __init__(self, fileobj, where: str, max_member_bytes: int):
        self.fileobj, self.limit = fileobj, max_member_bytes
        try:
            self.tf = tarfile.open(fileobj=fileobj, mode="r:*")
            members = self.tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as err:
            fileobj.close()
            raise SourceError(f"{where} is not a readable tar archive: {err}") from None
        self.members, self.refused = {}, []
        for m in members:
            if m.isdir():
                continue
            reason = unsafe_reason(m.name)
            if reason is None and not m.isfile():
                reason = "not a regular file in archive: a link or device (refused)"
            if reason is None and m.size > self.limit:
                reason = too_large(m.size, self.limit)
            if reason:
                self.refused.append((m.name, reason))
            else:
                self.members[posixpath.normpath(m.name)] = m
        self.names = sorted(self.members)

    def read(self, name: str) -> bytes:
        fh = self.tf.extractfile(self.members[name])
        return read_bounded(fh, self.limit) if fh else b""

    def close(self) -> None:
        self.tf.close()
        self.fileobj.close()


class FsspecFolderSource:
    """A folder (prefix) of an fsspec URL; listed=False: members are read by name, nothing is listed."""

    def __init__(self, fs, root: str, max_member_bytes: int, listed: bool = True):
        self.fs, self.root, self.limit = fs, root.rstrip("/"), max_member_bytes
        self.names, self.refused = [], []
        for path, info in sorted(fs.find(self.root, detail=True).items()) if listed else ():
            if not path.startswith(self.root + "/"):
                continue
            name, size = path[len(self.root) + 1:], info.get("size")
            if isinstance(size, int) and size > self.limit:
                self.refused.append((name, too_large(size, self.limit)))
            else:
                self.names.append(name)

    def read(self, name: str) -> bytes:
        with self.fs.open(f"{self.root}/{name}", "rb") as fh:
            return read_bounded(fh, self.limit)

    def close(self) -> None:
        pass


def open_source(src: str | Path, max_member_bytes: int = DEFAULT_MAX_MEMBER_MB * 2 ** 20) -> Source:
    """The source at src: a local folder or archive, or an fsspec URL of a folder (prefix) or archive."""
    text, limit = str(src), max_member_bytes
    if "://" not in text or text.startswith("file://"):
        path = Path(text.removeprefix("file://"))
        if not path.exists():
            raise SourceError(f"source not found: {path}")
        if path.is_dir():
            return FolderSource(path, limit)
        if zipfile.is_zipfile(path):
            return ZipSource(path, text, limit)
        if tarfile.is_tarfile(path):
            return TarSource(open(path, "rb"), text, limit)
        raise SourceError(f"source {path} is neither a folder nor a .zip or .tar archive")
    try:
        fs, root = open_filesystem(text)
        if text.lower().endswith(ARCHIVE_SUFFIXES):
            fh = fs.open(root, "rb")
            return ZipSource(fh, text, limit) if text.lower().endswith(".zip") else TarSource(fh, text, limit)
        if not fs.isdir(root):
            raise SourceError(f"source not found: {text}")
        return FsspecFolderSource(fs, root, limit)
    except FileNotFoundError:
        raise SourceError(f"source not found: {text}") from None
    except SourceError:
        raise
    except Exception as err:  # noqa: BLE001 - storage errors come in many types
        raise SourceError(f"source {text} cannot be read: {type(err).__name__}: {err}") from None


def member_reader(src: str, max_member_bytes: int) -> Source:
    """A source of the URL src that reads members by name without listing it (``names`` stays empty).

    For a ``--ray`` task, whose driver listed src already: a folder is not walked again; a .zip's
    directory is read, then the members by range.
    """
    text = str(src)
    if text.lower().endswith(".zip"):
        return open_source(text, max_member_bytes)
    if text.startswith("file://"):
        return FolderSource(Path(text[len("file://"):]), max_member_bytes, listed=False)
    fs, root = open_filesystem(text)
    return FsspecFolderSource(fs, root, max_member_bytes, listed=False)
