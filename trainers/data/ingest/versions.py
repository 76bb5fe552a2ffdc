"""Dataset versions at one destination: each ingest writes its own shard folder, the manifest switches last.

Layout of DEST::

    manifest.json                      names the published version's shards
    v-20260301T101500Z-1a2b3c4d/       one folder per ingest ("version"), time-ordered names
        shard-000000.tar ...
        .ingesting                     heartbeat while that ingest runs (UNIX time, refreshed every minute)
    ingest_report.json

An ingest writes its shards into a new version folder beside the published ones,
then replaces ``manifest.json`` in one step (a rename on a local folder, one PUT
on object storage), so a reader sees the old dataset or the new one, never a
mix. Until that switch the published dataset is untouched: a crash halfway
leaves it intact and readable (an ingest that fails in Python removes its own
folder; a killed one leaves it to the garbage collection below).

Garbage collection, run by each ingest right after its switch, keeps:

- the version the new manifest names;
- the version the replaced manifest named at the moment of the switch, so its
  readers (a training job that read the old manifest) keep working; it goes
  at the next ingest into the same destination;
- a version no manifest names whose heartbeat is younger than ORPHAN_GRACE_S
  (another ingest still writing).

It removes every other ``v-*`` folder (superseded two ingests ago, or left by a
crashed ingest) and root-level ``shard-NNNNNN.tar`` files from before versions
existed that the replaced manifest does not name. Nothing else in DEST is ever
touched. When the replaced manifest cannot be read, nothing is removed.
"""
from __future__ import annotations

import os
import posixpath
import re
import secrets
import time
from datetime import datetime, timezone

from trainers.data.manifest import MANIFEST_NAME, Manifest
from trainers.data.storage import open_filesystem

VERSION_RE = re.compile(r"^v-\d{8}T\d{6}Z-[0-9a-f]{8}$")
LEGACY_SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
HEARTBEAT = ".ingesting"
HEARTBEAT_EVERY_S = 60.0
ORPHAN_GRACE_S = 1800.0


def new_version(now: float | None = None) -> str:
    """A fresh version folder name: UTC time (sorts by age) and 32 random bits."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"v-{stamp}-{secrets.token_hex(4)}"


def _unreadable(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


class Destination:
    """One dataset destination: its version folders, its manifest switch and its garbage collection."""

    def __init__(self, url: str):
        self.url = url
        self.fs, root = open_filesystem(url)
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self._beat_at = 0.0
        self.switched = False

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def begin(self) -> str:
        """A new version folder, its heartbeat written first (it marks the folder as in progress)."""
        version = new_version()
        self.beat(version, force=True)
        return version

    def beat(self, version: str, force: bool = False) -> None:
        """Refreshes the version's heartbeat (at most every HEARTBEAT_EVERY_S unless forced)."""
        now = time.time()
        if force or now - self._beat_at >= HEARTBEAT_EVERY_S:
            if self.local:
                self.fs.makedirs(self.path(version), exist_ok=True)
            self.fs.pipe_file(self.path(version, HEARTBEAT), f"{now:.3f}".encode())
            self._beat_at = now

    def current(self) -> Manifest | None:
        """The published manifest, None when there is none; raises when one is there but unreadable."""
        try:
            text = self.fs.cat_file(self.path(MANIFEST_NAME))
        except FileNotFoundError:
            return None
        return Manifest.from_json(text, where=f"{self.url}/{MANIFEST_NAME}")

    def publish(self, manifest: Manifest, version: str) -> tuple[list[str], str | None]:
        """Switches manifest.json to manifest, then collects garbage; returns (removed, note).

        Nothing after the switch raises: the dataset is published once the manifest is.
        """
        try:
            replaced, note = self.current(), None
        except Exception as err:  # noqa: BLE001 - an unreadable old manifest only stops the cleanup
            replaced, note = None, f"the replaced manifest was unreadable ({_unreadable(err)}); nothing removed"
        self._switch(manifest, version)
        try:
            self.fs.rm(self.path(version, HEARTBEAT))
        except Exception:  # noqa: BLE001 - a stale heartbeat on a published version is harmless
            pass
        if note:
            return [], note
        keep = {s.path for s in manifest.shards} | ({s.path for s in replaced.shards} if replaced else set())
        return self.collect(keep, had_manifest=replaced is not None)

    def _switch(self, manifest: Manifest, version: str) -> None:
        data = manifest.to_json().encode()
        if self.local:  # a reader must never see a half-written manifest: write beside it, then rename
            tmp = self.path(version, f".{MANIFEST_NAME}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path(MANIFEST_NAME))
        else:  # one PUT: object stores replace an object atomically
            self.fs.pipe_file(self.path(MANIFEST_NAME), data)
        self.switched = True

    def collect(self, keep_paths: set[str], had_manifest: bool) -> tuple[list[str], str | None]:
        """Removes the version folders and pre-version shards that keep_paths do not name (see the module doc)."""
        keep_versions = {p.split("/", 1)[0] for p in keep_paths if "/" in p}
        try:
            self.fs.invalidate_cache()  # object stores: list what is there now, not what a cache remembers
            entries = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)]
        except Exception as err:  # noqa: BLE001
            return [], f"old versions not removed: cannot list {self.url} ({_unreadable(err)})"
        removed, failed = [], []
        for name in sorted(entries):
            stale = (VERSION_RE.match(name) and name not in keep_versions and not self._in_progress(name)) or \
                    (had_manifest and LEGACY_SHARD_RE.match(name) and name not in keep_paths)
            if stale:
                try:
                    self.fs.rm(self.path(name), recursive=True)
                    removed.append(name)
                except Exception as err:  # noqa: BLE001 - left for the next ingest
                    failed.append(f"{name} ({_unreadable(err)})")
        return removed, (f"could not remove {', '.join(failed)}" if failed else None)

    def _in_progress(self, version: str) -> bool:
        try:
            beat = float(self.fs.cat_file(self.path(version, HEARTBEAT)).decode())
        except FileNotFoundError:
            return False  # published once, then replaced: heartbeats go at the switch
        except Exception:  # noqa: BLE001 - unreadable: assume a live writer, the next ingest will see
            return True
        return time.time() - beat < ORPHAN_GRACE_S

    def abandon(self, version: str) -> None:
        """Removes an unpublished version folder (best effort: a later ingest removes what is left)."""
        if self.switched:
            return
        try:
            self.fs.rm(self.path(version), recursive=True)
        except Exception:  # noqa: BLE001
            pass
