"""Labels for ingest: a CSV ``file,tags[,caption]`` or a JSON ``{file: {tags, caption}}``, read strictly.

A labels file is small and written by hand or by a script, so a mistake in it is
an error that names the file and the line (CSV, undecodable bytes, bad JSON
syntax) or the entry and field (JSON values), never a traceback and never a
silent guess. The encoding is the caller's (default UTF-8, a BOM allowed).
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

from trainers.data.tags import normalise_tags

ENCODING_HINT = "pass the file's encoding with --labels-encoding (labels_encoding=), e.g. latin-1, cp1252, shift_jis"


class LabelsError(ValueError):
    """The labels file cannot be used; the message names the file and the line or field."""


@dataclass
class Label:
    tags: list[str]
    caption: str | None = None


def read_labels(path: str | Path, encoding: str = "utf-8") -> dict[str, Label]:
    """Reads labels: CSV with columns file,tags[,caption] or JSON {file: {tags, caption}} (by the suffix .json).

    Keys are relative POSIX paths inside the source; tags are stripped and lower-cased.
    Raises LabelsError naming the file and the line or field.
    """
    path = Path(path)
    text = _decode(path, encoding)
    return _json_labels(text, path) if path.suffix.lower() == ".json" else _csv_labels(text, path)


def _decode(path: Path, encoding: str) -> str:
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise LabelsError(f"unknown labels encoding {encoding!r}; {ENCODING_HINT}") from None
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LabelsError(f"labels file not found: {path}") from None
    except OSError as err:
        raise LabelsError(f"labels file {path} cannot be read: {err.strerror or err}") from None
    bom = codecs.BOM_UTF8 if codec.name == "utf-8" and raw.startswith(codecs.BOM_UTF8) else b""
    try:
        return raw[len(bom):].decode(codec.name)
    except UnicodeDecodeError as err:
        at = len(bom) + err.start
        line, line_start = raw.count(b"\n", 0, at) + 1, raw.rfind(b"\n", 0, at) + 1
        raise LabelsError(f"labels file {path}, line {line}: not valid {encoding} "
                          f"(byte 0x{raw[at]:02x} at column {at - line_start + 1}); {ENCODING_HINT}") from None


def _csv_labels(text: str, path: Path) -> dict[str, Label]:
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    labels: dict[str, Label] = {}
    lines: dict[str, int] = {}
    try:
        columns = reader.fieldnames
        if not columns:
            raise LabelsError(f"labels CSV {path} is empty: it needs a header line file,tags[,caption]")
        columns = [c.strip() for c in columns]
        if "file" not in columns:
            raise LabelsError(f"labels CSV {path}, line 1: no `file` column (the header names {columns}); "
                              "the header must be file,tags[,caption]")
        reader.fieldnames = columns
        for row in reader:
            _csv_row(row, reader.reader.line_num, path, labels, lines)
    except csv.Error as err:
        raise LabelsError(f"labels CSV {path}, line {reader.reader.line_num}: {err}") from None
    return labels


def _csv_row(row: dict, line: int, path: Path, labels: dict[str, Label], lines: dict[str, int]) -> None:
    values = {k: (v or "").strip() for k, v in row.items() if k is not None and isinstance(v, (str, type(None)))}
    name = values.get("file", "")
    if not name:
        if any(values.values()):
            raise LabelsError(f"labels CSV {path}, line {line}: the `file` field is empty")
        return
    key = posixpath.normpath(name)
    label = Label(normalise_tags(values.get("tags", "").split(",")), values.get("caption") or None)
    if key in labels and labels[key] != label:
        raise LabelsError(f"labels CSV {path}, line {line}: {name!r} is labelled again, differently "
                          f"(first on line {lines[key]})")
    labels[key], lines[key] = label, lines.get(key, line)


def _json_labels(text: str, path: Path) -> dict[str, Label]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise LabelsError(f"labels file {path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") \
            from None
    if not isinstance(raw, dict):
        raise LabelsError(f"labels file {path} must be a JSON object {{file: {{tags, caption}}}}, "
                          f"not a {_kind(raw)}")
    labels = {}
    for name, value in raw.items():
        if not name.strip():
            raise LabelsError(f"labels file {path}: an entry has an empty file name")
        labels[posixpath.normpath(name.strip())] = _json_label(value, f"labels file {path}: entry {name!r}")
    return labels


def _json_label(value: object, where: str) -> Label:
    if isinstance(value, list):
        return Label(_tag_list(value, f"{where}: the tag list"))
    if not isinstance(value, dict):
        raise LabelsError(f"{where}: expected an object {{tags, caption}} or a list of tags, got a {_kind(value)}")
    unknown = sorted(set(value) - {"tags", "caption"})
    if unknown:
        raise LabelsError(f"{where}: unknown field {unknown[0]!r} (the fields are tags and caption)")
    tags = value.get("tags")
    if isinstance(tags, str):
        tags = tags.split(",")
    elif tags is None:
        tags = []
    elif not isinstance(tags, list):
        raise LabelsError(f"{where}: field 'tags' must be a list of strings or a comma-separated string, "
                          f"got a {_kind(tags)} ({tags!r})")
    caption = value.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise LabelsError(f"{where}: field 'caption' must be a string or null, got a {_kind(caption)} ({caption!r})")
    return Label(_tag_list(tags, f"{where}: field 'tags'"), (caption or "").strip() or None)


def _tag_list(tags: list, where: str) -> list[str]:
    for i, t in enumerate(tags):
        if not isinstance(t, str):
            raise LabelsError(f"{where}: item {i} is a {_kind(t)} ({t!r}), expected a string")
    return normalise_tags(tags)


def _kind(value: object) -> str:
    return {dict: "JSON object", list: "JSON list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)
