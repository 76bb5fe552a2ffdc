"""Where ingest reads images from: a folder, a .zip or .tar(.gz|.bz2|.xz), or an fsspec URL of either.

Every source lists relative POSIX names in sorted order and reads one by name.
Archive members whose path is absolute or climbs out with ``..`` are refused
(listed with the reason, never read), as are links and devices.
"""
from __future__ import annotations

import posixpath
import tarfile
import zipfile
from pathlib import Path
from typing import Protocol

from trainers.data.storage import open_filesystem

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class SourceError(RuntimeError):
    """The source cannot be opened at all."""


class Source(Protocol):
    names: list[str]  # readable members, sorted
    refused: list[tuple[str, str]]  # (name, reason) of members that are never read

    def read(self, name: str) -> bytes: ...

    def close(self) -> None: ...


def unsafe_reason(name: str) -> str | None:
    """Why an archive member's path is refused, or None when it is a plain relative path."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive (refused)"
    if ".." in name.replace("\\", "/").split("/"):
        return "path climbs out of the archive with '..' (refused)"
    return None


class FolderSource:
    def __init__(self, root: Path):
        self.root = root
        self.names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        self.refused: list[tuple[str, str]] = []

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def close(self) -> None:
        pass


class ZipSource:
    def __init__(self, fileobj, where: str):
        try:
            self.zf = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError) as err:
            raise SourceError(f"{where} is not a readable zip archive: {err}") from None
        self.names, self.refused = [], []
        for info in self.zf.infolist():
            if info.is_dir():
                continue
            reason = unsafe_reason(info.filename)
            (self.refused.append((info.filename, reason)) if reason else self.names.append(info.filename))
        self.names.sort()

    def read(self, name: str) -> bytes:
        return self.zf.read(name)

    def close(self) -> None:
        self.zf.close()


class TarSource:
    def __init__(self, fileobj, where: str):
        self.fileobj = fileobj
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
            if reason:
                self.refused.append((m.name, reason))
            else:
                self.members[posixpath.normpath(m.name)] = m
        self.names = sorted(self.members)

    def read(self, name: str) -> bytes:
        fh = self.tf.extractfile(self.members[name])
        return fh.read() if fh else b""

    def close(self) -> None:
        self.tf.close()
        self.fileobj.close()


class FsspecFolderSource:
    def __init__(self, fs, root: str):
        self.fs, self.root = fs, root.rstrip("/")
        self.names = sorted(p[len(self.root) + 1:] for p in fs.find(self.root) if p.startswith(self.root + "/"))
        self.refused: list[tuple[str, str]] = []

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(f"{self.root}/{name}")

    def close(self) -> None:
        pass


def open_source(src: str | Path) -> Source:
    """The source at src: a local folder or archive, or an fsspec URL of a folder (prefix) or archive."""
    text = str(src)
    is_archive = text.lower().endswith(ARCHIVE_SUFFIXES)
    if "://" not in text or text.startswith("file://"):
        path = Path(text.removeprefix("file://"))
        if not path.exists():
            raise SourceError(f"source not found: {path}")
        if path.is_dir():
            return FolderSource(path)
        if zipfile.is_zipfile(path):
            return ZipSource(path, text)
        if tarfile.is_tarfile(path):
            return TarSource(open(path, "rb"), text)
        raise SourceError(f"source {path} is neither a folder nor a .zip or .tar archive")
    try:
        fs, root = open_filesystem(text)
        if is_archive:
            fh = fs.open(root, "rb")
            return ZipSource(fh, text) if text.lower().endswith(".zip") else TarSource(fh, text)
        if not fs.isdir(root):
            raise SourceError(f"source not found: {text}")
        return FsspecFolderSource(fs, root)
    except FileNotFoundError:
        raise SourceError(f"source not found: {text}") from None
    except SourceError:
        raise
    except Exception as err:  # noqa: BLE001 - storage errors come in many types
        raise SourceError(f"source {text} cannot be read: {type(err).__name__}: {err}") from None
