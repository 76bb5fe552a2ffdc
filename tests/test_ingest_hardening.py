"""Ingest under faults and bad input: re-ingest never breaks the published dataset, bad labels and
manifests are clear errors, archive members and folder links are bounded (issue 11, data)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from trainers.data.ingest import versions
from trainers.data.errors import DataError
from trainers.data.ingest.inputs import IngestError
from trainers.data.ingest.local import ingest
from trainers.data.ingest.sources import FolderSource, MemberTooLarge
from trainers.data.stream.shard_stream import ShardStream, read_manifest


def keys_of(url: str, **kw) -> list[str]:
    return [s["key"] for s in ShardStream(url, decode_workers=0, shuffle=False, **kw)]


def folders(dest: Path) -> set[str]:
    return {p.name for p in dest.iterdir() if p.name.startswith("v-")}


def small_source(faces: Path, dest: Path, n: int, prefix: str = "") -> Path:
    dest.mkdir()
    lines = ["file,tags"]
    for i in range(n):
        (dest / f"{prefix}{i:06d}.png").write_bytes((faces / f"{i:06d}.png").read_bytes())
        lines.append(f"{prefix}{i:06d}.png,t{i % 3}")
    (dest / "labels.csv").write_text("\n".join(lines) + "\n")
    return dest


# -- re-ingest ------------------------------------------------------------------
def test_a_reader_of_the_old_manifest_reads_it_to_the_end_across_reingests(faces, tmp_path):
    dest = tmp_path / "ds"
    a = ingest(faces, str(dest), faces / "labels.csv", shard_mb=0.01, workers=1)
    assert len(a.manifest.shards) > 10
    reader = ShardStream(str(dest), decode_workers=0, shuffle=False, window_mb=0.01, readahead_mb=0,
                         fetch_threads=1, chunk=4)
    it = iter(reader)
    first = [next(it)["key"] for _ in range(8)]
    b_src = small_source(faces, tmp_path / "b", 40, prefix="b")
    b = ingest(b_src, str(dest), b_src / "labels.csv", resolution=8, shard_mb=0.01, workers=1)
    rest = [s for s in it]
    assert len(first) + len(rest) == 240 and {s["image"].shape for s in rest} == {(16, 16, 3)}
    assert reader.manifest.dataset_hash == a.manifest.dataset_hash
    # new readers see B; A's shards stay beside it until the next ingest
    assert read_manifest(str(dest)).dataset_hash == b.manifest.dataset_hash and len(keys_of(str(dest))) == 40
    assert folders(dest) == {a.version, b.version} and b.removed == []
    c = ingest(b_src, str(dest), b_src / "labels.csv", resolution=8, workers=1)
    assert folders(dest) == {b.version, c.version} and c.removed == [a.version]
    assert json.loads((dest / "ingest_report.json").read_text())["removed"] == [a.version]


KILLED_INGEST = """
import os, signal, sys
from trainers.data.ingest.local import ingest
def progress(done, total):
    if done == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
ingest(sys.argv[1], sys.argv[2], shard_mb=0.005, workers=1, progress=progress)
"""


def test_a_killed_reingest_leaves_the_published_dataset_intact_and_is_cleaned_later(faces, tmp_path, monkeypatch):
    dest = tmp_path / "ds"
    a = ingest(faces, str(dest), faces / "labels.csv", shard_mb=0.01, workers=1)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    b_src = small_source(faces, tmp_path / "b", 200, prefix="b")
    proc = subprocess.run([sys.executable, "-c", KILLED_INGEST, str(b_src), str(dest), "150"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert read_manifest(str(dest)).dataset_hash == a.manifest.dataset_hash
    assert sorted(keys_of(str(dest))) == sorted(f"{i:06d}" for i in range(240))
    orphans = folders(dest) - {a.version}
    assert len(orphans) == 1 and len(list((dest / orphans.pop()).glob("shard-*.tar"))) > 3  # killed halfway
    # the orphan's heartbeat is fresh: a later ingest takes it for one still running and leaves it
    c = ingest(b_src, str(dest), b_src / "labels.csv", resolution=8, workers=1)
    assert len(folders(dest)) == 3 and c.removed == []
    monkeypatch.setattr(versions, "ORPHAN_GRACE_S", 0.0)
    d = ingest(b_src, str(dest), b_src / "labels.csv", resolution=8, workers=1)
    assert folders(dest) == {c.version, d.version} and len(d.removed) == 2


def test_an_interrupted_reingest_removes_its_own_folder_and_keeps_the_old_dataset(faces, tmp_path, monkeypatch):
    dest = tmp_path / "ds"
    a = ingest(faces, str(dest), faces / "labels.csv", shard_mb=0.01, workers=1)
    reads = {"n": 0}
    real_read = FolderSource.read

    def read(self, name):
        reads["n"] += 1
        if reads["n"] == 100:
            raise KeyboardInterrupt  # Ctrl-C halfway
        return real_read(self, name)

    monkeypatch.setattr(FolderSource, "read", read)
    b_src = small_source(faces, tmp_path / "b", 200, prefix="b")
    with pytest.raises(KeyboardInterrupt):
        ingest(b_src, str(dest), b_src / "labels.csv", resolution=8, shard_mb=0.005, workers=1)
    assert read_manifest(str(dest)).dataset_hash == a.manifest.dataset_hash and len(keys_of(str(dest))) == 240
    assert folders(dest) == {a.version}


def test_a_dataset_from_before_versions_is_replaced_then_removed(faces, tmp_path):
    dest = tmp_path / "ds"
    a = ingest(faces, str(dest), faces / "labels.csv", workers=1)
    # rewrite it into the old layout: shards at the root
    m = json.loads((dest / "manifest.json").read_text())
    for s in m["shards"]:
        os.replace(dest / s["path"], dest / s["path"].split("/")[1])
        s["path"] = s["path"].split("/")[1]
    os.rmdir(dest / a.version)
    (dest / "manifest.json").write_text(json.dumps(m))
    (dest / "mine.txt").write_text("not ganray's")
    b = ingest(faces, str(dest), faces / "labels.csv", workers=1)
    assert (dest / "shard-000000.tar").exists() and b.removed == []
    c = ingest(faces, str(dest), faces / "labels.csv", workers=1)
    assert not (dest / "shard-000000.tar").exists() and c.removed == ["shard-000000.tar"]
    assert (dest / "mine.txt").exists() and folders(dest) == {b.version, c.version}


# -- labels ------------------------------------------------------------------------
def test_a_labels_csv_that_is_not_utf8_is_named_with_its_line_and_a_labels_encoding_reads_it(faces, tmp_path):
    src = small_source(faces, tmp_path / "src", 3)
    labels = tmp_path / "labels.csv"
    labels.write_bytes("file,tags\n000000.png,blue eyes\n000001.png,caf\u00e9 hat\n000002.png,x\n".encode("latin-1"))
    with pytest.raises(IngestError) as err:
        ingest(src, str(tmp_path / "ds"), labels, workers=1)
    msg = str(err.value)
    assert str(labels) in msg and "line 3" in msg and "utf-8" in msg and "byte 0xe9" in msg
    assert "--labels-encoding" in msg and not (tmp_path / "ds" / "manifest.json").exists()
    report = ingest(src, str(tmp_path / "ds"), labels, workers=1, labels_encoding="latin-1")
    assert "caf\u00e9 hat" in report.manifest.tags
    with pytest.raises(IngestError, match="unknown labels encoding 'klingon'"):
        ingest(src, str(tmp_path / "ds"), labels, workers=1, labels_encoding="klingon")


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("name,tags\na.png,x\n", r"line 1: no `file` column \(the header names \['name', 'tags'\]\)"),
    ("file,tags\n000000.png,x\n,orphan tags\n", "line 3: the `file` field is empty"),
    ("file,tags\n000000.png,x\n000001.png,y\n000000.png,z\n", "line 4: '000000.png' is labelled again"),
    ('file,tags\n000000.png,"unclosed\n', "line 2: unexpected end of data"),
])
def test_bad_labels_csv_names_the_file_and_line(faces, tmp_path, text, expected):
    src = small_source(faces, tmp_path / "src", 2)
    labels = tmp_path / "l.csv"
    labels.write_text(text)
    with pytest.raises(IngestError, match=expected) as err:
        ingest(src, str(tmp_path / "ds"), labels, workers=1)
    assert str(labels) in str(err.value)


@pytest.mark.parametrize("value, expected", [
    ({"000000.png": {"tags": [1, 2]}}, r"entry '000000.png': field 'tags': item 0 is a number \(1\)"),
    ({"000000.png": {"tags": ["a", None]}}, r"field 'tags': item 1 is a null"),
    ({"000000.png": {"tags": 5}}, r"field 'tags' must be a list of strings .* got a number \(5\)"),
    ({"000000.png": {"tags": ["a"], "caption": 3}}, r"field 'caption' must be a string or null, got a number"),
    ({"000000.png": [["nested"]]}, r"the tag list: item 0 is a JSON list"),
    ({"000000.png": "a,b"}, r"expected an object \{tags, caption\} or a list of tags, got a string"),
    ({"000000.png": {"tag": ["a"]}}, r"unknown field 'tag'"),
    (["000000.png"], r"must be a JSON object .* not a JSON list"),
])
def test_bad_json_labels_name_the_entry_and_field(faces, tmp_path, value, expected):
    src = small_source(faces, tmp_path / "src", 2)
    labels = tmp_path / "l.json"
    labels.write_text(json.dumps(value))
    with pytest.raises(IngestError, match=expected) as err:
        ingest(src, str(tmp_path / "ds"), labels, workers=1)
    assert str(labels) in str(err.value)


def test_json_labels_syntax_errors_name_the_line(faces, tmp_path):
    src = small_source(faces, tmp_path / "src", 2)
    labels = tmp_path / "l.json"
    labels.write_text('{\n  "000000.png": {"tags": ["a"]},\n  "000001.png": {"tags": ["b"]\n}\n')
    with pytest.raises(IngestError, match=r"l.json, line 5 column 1: not valid JSON"):
        ingest(src, str(tmp_path / "ds"), labels, workers=1)
    with pytest.raises(IngestError, match="cannot be read"):
        ingest(src, str(tmp_path / "ds"), tmp_path, workers=1)  # a folder, not a file


def test_unknown_schemes_and_bad_limits_are_refused_before_any_work(faces, tmp_path):
    with pytest.raises(IngestError, match=r"source foo://x: unknown URL scheme .foo.; use a local path or one of: .*file://"):
        ingest("foo://x", str(tmp_path / "ds"))
    with pytest.raises(IngestError, match=r"destination bar://q: unknown URL scheme 'bar'.* s3://"):
        ingest(faces, "bar://q")
    with pytest.raises(IngestError, match="--max-member-mb must be positive, got 0"):
        ingest(faces, str(tmp_path / "ds"), max_member_mb=0)
    with pytest.raises(IngestError, match="--shard-mb must be positive, got -1"):
        ingest(faces, str(tmp_path / "ds"), shard_mb=-1)
    assert not (tmp_path / "ds").exists()


# -- manifests --------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("[1, 2]", "expected a JSON object, got a list"),
    ('"manifest"', "expected a JSON object, got a string"),
    ("{", "is not valid JSON"),
    (None, "field `shards` is missing"),
])
def test_a_manifest_that_is_not_an_object_is_a_named_data_error(faces, tmp_path, text, expected):
    dest = tmp_path / "ds"
    ingest(faces, str(dest), faces / "labels.csv", workers=1)
    (dest / "manifest.json").write_text(text if text is not None else '{"format_version": 1}')
    for attempt in (lambda: read_manifest(str(dest)), lambda: ShardStream(str(dest), decode_workers=0)):
        with pytest.raises(DataError, match=expected) as err:
            attempt()
        assert f"{dest}/manifest.json" in str(err.value)


def test_a_manifest_with_ill_typed_or_escaping_shards_is_refused(faces, tmp_path):
    dest = tmp_path / "ds"
    ingest(faces, str(dest), faces / "labels.csv", workers=1)
    good = json.loads((dest / "manifest.json").read_text())
    for change, expected in [({"path": "../../etc/passwd"}, r"shards\[0\].path` must be a plain path"),
                             ({"samples": "240"}, r"shards\[0\].samples` must be an integer, got a string"),
                             ({"sha256": "abc"}, r"shards\[0\].sha256` must be 64 hex digits"),
                             ({"samples": 239}, "`num_samples` is 240, the shards hold 239")]:
        bad = json.loads(json.dumps(good))
        bad["shards"][0].update(change)
        (dest / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=expected):
            read_manifest(str(dest))


# -- archive members and folder links ------------------------------------------------
MB = 1 << 20


class Zeros:
    """A file-like of n zero bytes, read in pieces (so building a bomb takes no memory)."""

    def __init__(self, n: int):
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return b"\0" * size


def peak_of_ingest(*args, **kw):
    tracemalloc.start()
    try:
        report = ingest(*args, **kw)
        return report, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _zip_bomb(path: Path, faces: Path, declared_lie: int | None = None) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i in range(3):
            zf.write(faces / f"{i:06d}.png", f"{i:06d}.png")
        with zf.open("bomb.png", "w") as w:
            zeros = Zeros(300 * MB)
            while chunk := zeros.read(4 * MB):
                w.write(chunk)
    if declared_lie is not None:  # the central directory says the member is small
        data = bytearray(path.read_bytes())
        at = data.rfind(b"PK\x01\x02")  # the last entry: bomb.png
        data[at + 24:at + 28] = declared_lie.to_bytes(4, "little")
        path.write_bytes(bytes(data))


def test_a_zip_bomb_member_is_skipped_by_its_declared_size_without_reading_it(faces, tmp_path):
    path = tmp_path / "bomb.zip"
    _zip_bomb(path, faces)
    assert path.stat().st_size < 2 * MB
    report, peak = peak_of_ingest(path, str(tmp_path / "ds"), workers=1)
    assert peak < 32 * MB, f"peak Python memory {peak / MB:.0f} MB"
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert report.ingested == 3 and reasons == {
        "bomb.png": "member too large: 300.0 MB declared, the limit is 256.0 MB (--max-member-mb)"}
    on_disk = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert on_disk["skipped"] == [{"file": "bomb.png", "reason": reasons["bomb.png"]}]
    # a lower limit refuses it the same way; a header that lies small is read no further than it says
    report = ingest(path, str(tmp_path / "ds2"), workers=1, max_member_mb=1)
    assert "the limit is 1.0 MB" in report.skipped[0]["reason"]
    _zip_bomb(tmp_path / "liar.zip", faces, declared_lie=1000)
    report, peak = peak_of_ingest(tmp_path / "liar.zip", str(tmp_path / "ds3"), workers=1)
    assert report.ingested == 3 and report.skipped[0]["file"] == "bomb.png" and peak < 32 * MB


def test_a_tar_bomb_member_is_skipped_by_its_declared_size(faces, tmp_path):
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        tf.add(faces / "000000.png", "000000.png")
        info = tarfile.TarInfo("bomb.png")
        info.size = 300 * MB
        tf.addfile(info, Zeros(300 * MB))
    report, peak = peak_of_ingest(path, str(tmp_path / "ds"), workers=1)
    assert peak < 32 * MB, f"peak Python memory {peak / MB:.0f} MB"
    assert report.ingested == 1 and report.skipped[0]["file"] == "bomb.png"
    assert report.skipped[0]["reason"].startswith("member too large: 300.0 MB declared")


def test_a_folder_file_over_the_limit_or_grown_since_the_listing_is_never_read_whole(faces, tmp_path):
    src = small_source(faces, tmp_path / "src", 2)
    (src / "huge.png").write_bytes(os.urandom(3 * MB))
    report = ingest(src, str(tmp_path / "ds"), workers=1, max_member_mb=2)
    assert {s["file"]: s["reason"] for s in report.skipped} == {
        "huge.png": "member too large: 3.0 MB declared, the limit is 2.0 MB (--max-member-mb)"}
    source = FolderSource(src, 2 * MB)
    (src / "000000.png").write_bytes(os.urandom(3 * MB))  # grew after the listing
    with pytest.raises(MemberTooLarge, match="more than 2.0 MB when read"):
        source.read("000000.png")


def test_a_folder_source_does_not_follow_links_out_of_the_folder(faces, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes((faces / "000005.png").read_bytes())
    src = small_source(faces, tmp_path / "src", 2)
    (src / "leak.png").symlink_to(outside / "secret.png")
    (src / "leakdir").symlink_to(outside)
    (src / "alias.png").symlink_to(src / "000000.png")  # stays inside: read
    (src / "broken.png").symlink_to(src / "nowhere.png")
    os.mkfifo(src / "pipe.png")
    report = ingest(src, str(tmp_path / "ds"), workers=1)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert report.ingested == 3 and set(reasons) == {"leak.png", "leakdir", "broken.png", "pipe.png"}
    assert reasons["leak.png"] == reasons["leakdir"] == "symlink pointing out of the source folder (refused)"
    assert reasons["broken.png"] == "broken symlink (refused)" and "not a regular file" in reasons["pipe.png"]
