"""The end of an ingest: the version published (or abandoned), ``DEST/ingest_report.json`` written.

The same ending for the local ingest and ``--ray`` ingest: ``publish`` switches the
manifest to the new version and records what the garbage collection removed
(``versions.py``); ``finish`` writes the report and raises when nothing was ingested.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trainers.data.ingest.inputs import IngestError
from trainers.data.ingest.versions import Destination
from trainers.data.manifest import Manifest
from trainers.data.storage import join, open_filesystem


@dataclass
class IngestReport:
    ingested: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    manifest: Manifest | None = None
    version: str | None = None  # the version folder the manifest now names
    removed: list[str] = field(default_factory=list)  # old version folders (or pre-version shards) removed
    notes: list[str] = field(default_factory=list)

    def skip(self, file: str, reason: str) -> None:
        self.skipped.append({"file": file, "reason": reason})

    def to_json(self) -> str:
        return json.dumps({"ingested": self.ingested, "skipped": self.skipped, "version": self.version,
                           "removed": self.removed, "notes": self.notes}, indent=2)


def publish(dest: Destination, version: str, manifest: Manifest | None, report: IngestReport) -> None:
    """Switches dest to version's manifest and notes it in report; with no manifest (nothing was
    ingested) the version folder goes and the published dataset stays as it was."""
    if manifest is None:
        dest.abandon(version)
        return
    report.manifest = manifest
    report.removed, note = dest.publish(manifest, version)
    report.version, report.notes = version, [note] if note else []


def finish(src: str | Path, dest: str, report: IngestReport) -> IngestReport:
    """Writes report to dest/ingest_report.json and returns it; IngestError when nothing was ingested."""
    fs, root = open_filesystem(dest)
    with fs.open(f"{root}/ingest_report.json", "wb") as fh:
        fh.write(report.to_json().encode())
    if not report.ingested:
        raise IngestError(f"nothing ingested from {src}: {len(report.skipped)} files skipped "
                          f"(see {join(dest, 'ingest_report.json')})")
    return report
