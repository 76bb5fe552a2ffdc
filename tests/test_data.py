"""Synthetic data, ingest and the ShardStream, on local folders and the real S3 server."""
import json

import numpy as np
import pytest

from trainers.data.errors import DataError
from trainers.data.ingest.inputs import IngestError
from trainers.data.ingest.local import ingest
from trainers.data.ingest.synth import write_synthetic_dataset
from trainers.data.stream.shard_stream import ShardStream, read_manifest


def test_synth_is_deterministic(tmp_path):
    write_synthetic_dataset(tmp_path / "a", 6, 16, seed=1)
    write_synthetic_dataset(tmp_path / "b", 6, 16, seed=1)
    for name in ["000000.png", "000005.png", "labels.csv"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "hair" in (tmp_path / "a" / "labels.csv").read_text()


def test_ingest_writes_shards_manifest_and_report(faces, tmp_path):
    report = ingest(faces, str(tmp_path / "ds"), faces / "labels.csv", shard_mb=0.02)
    m = report.manifest
    assert report.ingested == m.num_samples == 240 and len(m.shards) > 1
    assert sum(s.samples for s in m.shards) == 240 and m.resolution == 16
    assert any(t.endswith(" hair") for t in m.tags)
    on_disk = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert on_disk["ingested"] == 240 and on_disk["skipped"] == [] and on_disk["version"] == report.version
    assert all(s.path.startswith(f"{report.version}/shard-") for s in m.shards)
    # the hash depends on content, not on how it is sharded
    again = ingest(faces, str(tmp_path / "ds2"), faces / "labels.csv", shard_mb=64)
    assert again.manifest.dataset_hash == m.dataset_hash and len(again.manifest.shards) == 1


def test_ingest_reports_every_bad_file(faces, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ["000000.png", "000001.png", "000002.png"]:
        (src / name).write_bytes((faces / name).read_bytes())
    (src / "truncated.png").write_bytes((faces / "000003.png").read_bytes()[:60])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    (src / "unlabelled.png").write_bytes((faces / "000004.png").read_bytes())
    labels = src / "labels.csv"
    labels.write_text("file,tags\n000000.png,\"Blonde  Hair, blue eyes\"\n000001.png,hat\n000002.png,\n"
                      "truncated.png,x\nempty.png,x\nghost.png,x\n")
    report = ingest(src, str(tmp_path / "out"), labels)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert report.ingested == 3
    assert set(reasons) == {"truncated.png", "empty.png", "notes.txt", "unlabelled.png", "ghost.png"}
    assert "zero-byte" in reasons["empty.png"] and "not a readable image" in reasons["truncated.png"]
    assert "no label" in reasons["unlabelled.png"] and "no such file" in reasons["ghost.png"]
    assert report.manifest.tags["blonde hair"] == 1


def test_ingest_with_nothing_usable_fails_and_says_why(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"garbage")
    with pytest.raises(IngestError, match="nothing ingested"):
        ingest(src, str(tmp_path / "out"))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_are_disjoint_equal_and_cover_the_epoch(faces, tmp_path, world):
    ingest(faces, str(tmp_path / "ds"), faces / "labels.csv", shard_mb=0.02)
    keys = [[s["key"] for s in ShardStream(str(tmp_path / "ds"), r, world, seed=5)] for r in range(world)]
    flat = [k for ks in keys for k in ks]
    assert len({len(k) for k in keys}) == 1 and len(flat) == len(set(flat)) == 240 - 240 % world


def test_resume_across_world_sizes_repeats_and_skips_nothing(faces, tmp_path):
    ingest(faces, str(tmp_path / "ds"), faces / "labels.csv", shard_mb=0.02)
    url = str(tmp_path / "ds")
    first = [ShardStream(url, r, 2, seed=9) for r in range(2)]
    its = [iter(s) for s in first]
    seen = [next(it)["key"] for _ in range(37) for it in its]
    state = json.loads(json.dumps(first[1].state_dict()))  # any rank's state is the global one
    rest = []
    for r in range(3):
        s = ShardStream(url, r, 3, seed=9)
        s.load_state_dict(state)
        rest += [x["key"] for x in s]
    assert not set(seen) & set(rest)
    assert len(seen) + len(rest) == len(set(seen) | set(rest)) >= 240 - 2
    # the next iteration starts the next epoch, in a new order
    s = ShardStream(url, 0, 1, seed=9)
    e0 = [x["key"] for x in s]
    e1 = [x["key"] for x in s]
    assert sorted(e0) == sorted(e1) and e0 != e1 and s.epoch == 1


def test_sample_fields(faces, tmp_path):
    ingest(faces, str(tmp_path / "ds"), faces / "labels.csv")
    sample = next(iter(ShardStream(str(tmp_path / "ds"))))
    assert sample["image"].shape == (16, 16, 3) and sample["image"].dtype == np.uint8
    assert sample["tags"] and sample["caption"] is None


def test_missing_dataset_and_corrupt_shard_are_named(faces, tmp_path):
    with pytest.raises(DataError, match="manifest.json not found"):
        read_manifest(str(tmp_path / "nowhere"))
    m = ingest(faces, str(tmp_path / "ds"), faces / "labels.csv").manifest
    shard = tmp_path / "ds" / m.shards[0].path
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(DataError, match=shard.name):
        next(iter(ShardStream(str(tmp_path / "ds"))))


def test_ingest_and_stream_through_the_s3_server(stack, faces):
    ingest(faces, "s3://ganray/tests/faces", faces / "labels.csv", shard_mb=0.05)
    keys = [[s["key"] for s in ShardStream("s3://ganray/tests/faces", r, 2, seed=1)] for r in range(2)]
    assert len(set(keys[0]) | set(keys[1])) == 240


def test_unreachable_bucket_is_found_before_any_work(stack, faces):
    with pytest.raises(IngestError, match="no-such-bucket.*unreachable or not writable"):
        ingest(faces, "s3://no-such-bucket/x", faces / "labels.csv")


def test_staging_left_by_a_killed_reader_is_removed(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from trainers.data.stream.pipeline import staging_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    base = staging_dir(1)
    folder = os.path.dirname(base)
    orphan = os.path.join(folder, f"ganray-shards-{int(dead.stdout)}-test")
    os.makedirs(orphan)
    mine = staging_dir(1)
    assert not os.path.exists(orphan) and os.path.exists(base) and f"-{os.getpid()}-" in mine
    shutil.rmtree(base), shutil.rmtree(mine)
