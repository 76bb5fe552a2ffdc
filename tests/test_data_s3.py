"""Ingest and ShardStream against the real S3 server (moto on loopback), with and without faults.

The fault proxy is a small HTTP server on 127.0.0.1 that forwards every request
to the S3 server and, on the first GET of each shard, injects one fault in turn:
a connection reset, a 503 SlowDown, a 500, a body cut short, a stall longer than
the client's read timeout, or a delay. The stream read through it must equal the
clean one, sample for sample and pixel for pixel.
"""
import copy
import hashlib
import http.client
import itertools
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from conftest import ganray
from trainers.data.errors import DataError
from trainers.data.ingest.inputs import IngestError
from trainers.data.ingest.local import ingest
from trainers.data.storage import open_filesystem, storage_options_for
from trainers.data.stream.shard_stream import ShardStream, batches
from trainers.data.stream.shards import LocalCache

FAULTS = ["reset", "slowdown", "internal", "truncate", "stall", "delay"]


class FaultProxy:
    """Forwards to the S3 server; the first GET of each shard gets the next fault of FAULTS."""

    def __init__(self, upstream: str, stall_s: float = 3.0, refuse_signed: bool = False):
        self.upstream = urlsplit(upstream)
        self.stall_s = stall_s
        self.refuse_signed = refuse_signed  # answer presigned GETs as a server in another region would
        self.signed_gets = 0
        self.injected: dict[str, int] = {k: 0 for k in FAULTS}
        self.requests = 0
        self._seen: set[str] = set()
        self._cycle = itertools.cycle(FAULTS)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.handle(self)

            def do_HEAD(self):
                proxy.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault_for(self, handler) -> str | None:
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests += 1
            if handler.command != "GET" or not path.endswith(".tar") or path in self._seen:
                return None
            self._seen.add(path)
            fault = next(self._cycle)
            self.injected[fault] += 1
            return fault

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        if "X-Amz-Signature=" in h.path:
            with self._lock:
                self.signed_gets += 1
            if self.refuse_signed:
                body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code>"
                        b"<Message>use the bucket's own endpoint</Message></Error>")
                h.send_response(301)
                h.send_header("Content-Type", "application/xml")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
                return
        fault = self._fault_for(h)
        if fault == "reset":
            return self._reset(h)
        if fault in ("slowdown", "internal"):
            code, name = (503, "SlowDown") if fault == "slowdown" else (500, "InternalError")
            body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{name}</Code>"
                    f"<Message>injected by the test proxy</Message></Error>").encode()
            h.send_response(code)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if fault == "stall":
            time.sleep(self.stall_s)
        if fault == "delay":
            time.sleep(0.3)
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(h.command, h.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command == "HEAD":
            return
        if fault == "truncate":
            h.wfile.write(body[: len(body) // 3])
            h.wfile.flush()
            return self._reset(h)
        h.wfile.write(body)

    @staticmethod
    def _reset(h: BaseHTTPRequestHandler) -> None:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True


def proxied_options(url: str, proxy: FaultProxy) -> dict:
    opts = copy.deepcopy(storage_options_for(url))
    opts["client_kwargs"] = {"endpoint_url": proxy.url}
    opts["config_kwargs"] = {"connect_timeout": 2, "read_timeout": 1, "retries": {"max_attempts": 2, "mode": "standard"}}
    opts["skip_instance_cache"] = True
    return opts


def epoch_of(url: str, rank: int, world: int, **kw) -> list[tuple[str, str]]:
    """(key, sha256 of the pixels) of one epoch of one rank."""
    with ShardStream(url, rank, world, seed=11, **kw) as s:
        return [(x["key"], hashlib.sha256(x["image"].tobytes()).hexdigest()) for x in s]


@pytest.fixture(scope="module")
def s3_faces(stack, faces):
    url = "s3://ganray/tests/s3-faces"
    report = ingest(faces, url, faces / "labels.csv", shard_mb=0.02, workers=2)
    assert len(report.manifest.shards) >= 8
    return url


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_are_disjoint_equal_and_cover_the_epoch_on_s3(s3_faces, world):
    keys = [[k for k, _ in epoch_of(s3_faces, r, world, decode_workers=1, window_mb=0.05)] for r in range(world)]
    flat = [k for ks in keys for k in ks]
    assert {len(k) for k in keys} == {240 // world}
    assert len(flat) == len(set(flat)) == 240 - 240 % world


def test_resume_across_world_sizes_on_s3(s3_faces):
    w1, w2, batch = 3, 2, 5
    streams = [ShardStream(s3_faces, r, w1, seed=4, window_mb=0.05, decode_workers=1) for r in range(w1)]
    gens = [batches(s, batch) for s in streams]
    seen = []
    for _ in range(9):  # 9 batches of 5 on each of 3 ranks: 135 samples
        for g in gens:
            seen += [x["key"] for x in next(g)[1]]
    states = [json.loads(json.dumps(s.state_dict())) for s in streams]
    assert all(st == states[0] for st in states) and states[0]["consumed"] == 135
    for s in streams:
        s.close()
    rest = []
    for r in range(w2):
        s = ShardStream(s3_faces, r, w2, seed=4, window_mb=0.05, decode_workers=1)
        s.load_state_dict(states[r % w1])
        rest += [x["key"] for x in s]
        assert s.epoch == 0
        s.close()
    assert len(rest) == 2 * ((240 - 135) // 2) and not set(seen) & set(rest)
    assert len(set(seen) | set(rest)) == 240 - (240 - 135) % 2
    # the global order is the same whatever the world size: the union is the epoch's prefix
    order = ShardStream(s3_faces, seed=4, window_mb=0.05).permutation(0)
    assert len(order) == 240 and sorted(order.tolist()) == list(range(240))


def test_state_between_batches_is_exact_and_a_break_loses_nothing(s3_faces):
    straight = ShardStream(s3_faces, 1, 2, seed=2, decode_workers=1)
    g = batches(straight, 7)
    ref = [[x["key"] for x in next(g)[1]] for _ in range(30)]  # 420 samples: rolls into epoch 1
    assert straight.epoch == 1
    straight.close()
    s = ShardStream(s3_faces, 1, 2, seed=2, decode_workers=1)
    g = batches(s, 7)
    got = [[x["key"] for x in next(g)[1]] for _ in range(10)]
    state = s.state_dict()
    assert state["consumed"] == 140 and state["epoch"] == 0
    s.close()
    resumed = ShardStream(s3_faces, 0, 2, seed=2, decode_workers=1)  # another rank's object, same global state
    resumed.load_state_dict(state)
    resumed.rank = 1
    g = batches(resumed, 7)
    got += [[x["key"] for x in next(g)[1]] for _ in range(20)]
    assert got == ref
    resumed.close()
    # breaking out of an epoch and iterating again continues where it stopped
    s = ShardStream(s3_faces, 0, 1, seed=3, decode_workers=1)
    first = []
    for x in s:
        first.append(x["key"])
        if len(first) == 50:
            break
    first += [x["key"] for x in s]
    assert len(first) == len(set(first)) == 240 == len(s) and s.epoch == 0
    s.close()


def test_stream_through_faults_equals_the_clean_stream(s3_faces):
    clean = [epoch_of(s3_faces, r, 2, decode_workers=1) for r in range(2)]
    proxy = FaultProxy(storage_options_for(s3_faces)["client_kwargs"]["endpoint_url"])
    try:
        opts = proxied_options(s3_faces, proxy)
        faulty = [epoch_of(s3_faces, r, 2, decode_workers=1, storage_options=opts, fetch_threads=4)
                  for r in range(2)]
    finally:
        proxy.close()
    assert faulty == clean and len(clean[0]) == 120
    assert all(proxy.injected[k] >= 1 for k in FAULTS), proxy.injected
    assert proxy.signed_gets > 0  # the shards came through presigned GETs (urllib3), not s3fs


def test_a_server_that_refuses_signed_gets_is_read_through_s3fs(s3_faces):
    clean = epoch_of(s3_faces, 0, 1, decode_workers=1)
    proxy = FaultProxy(storage_options_for(s3_faces)["client_kwargs"]["endpoint_url"], refuse_signed=True)
    try:
        refused = epoch_of(s3_faces, 0, 1, decode_workers=1, storage_options=proxied_options(s3_faces, proxy))
    finally:
        proxy.close()
    # refused once per fetch thread at most (they ask at the same time), then s3fs for the rest, faults and all
    assert refused == clean and 1 <= proxy.signed_gets <= 8 and sum(proxy.injected.values()) > 0


def test_transport_errors_name_the_shard_and_never_a_signed_url(stack, s3_faces):
    from trainers.data.stream.shards import ShardFetcher
    from trainers.data.stream.shard_stream import read_manifest

    manifest = read_manifest(s3_faces)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    opts = {**storage_options_for(s3_faces), "client_kwargs": {"endpoint_url": dead}}
    fetcher = ShardFetcher(s3_faces, manifest, storage_options=opts, attempts=2, backoff_s=0.01)
    with pytest.raises(DataError) as err:
        fetcher.fetch(0)
    text = str(err.value)
    assert f"shard {manifest.shards[0].path} of {s3_faces} could not be read after 2 attempts" in text
    assert "Connect" in text  # says what went wrong
    assert "X-Amz" not in text and "Signature" not in text and opts["key"] not in text and opts["secret"] not in text


def test_missing_and_corrupt_shards_are_named(stack, faces):
    url = "s3://ganray/tests/s3-broken"
    m = ingest(faces, url, faces / "labels.csv", shard_mb=0.05, workers=1).manifest
    fs, root = open_filesystem(url)
    fs.rm(f"{root}/{m.shards[1].path}")
    with pytest.raises(DataError, match=f"shard {m.shards[1].path} of {url} is missing"):
        list(ShardStream(url, decode_workers=0))
    data = bytearray(fs.cat_file(f"{root}/{m.shards[0].path}"))
    data[700] ^= 0xFF
    fs.pipe_file(f"{root}/{m.shards[0].path}", bytes(data))
    with pytest.raises(DataError, match=f"shard {m.shards[0].path} of {url} is corrupt: its sha256"):
        list(ShardStream(url, shuffle=False, decode_workers=0))
    with pytest.raises(DataError, match="manifest.json not found"):
        ShardStream("s3://ganray/tests/no-such-dataset")


def test_local_cache_serves_when_storage_is_gone_and_stays_bounded(stack, faces, tmp_path):
    url = "s3://ganray/tests/s3-cached"
    m = ingest(faces, url, faces / "labels.csv", shard_mb=0.02, workers=1).manifest
    total = sum(s.bytes for s in m.shards)
    first = epoch_of(url, 0, 1, decode_workers=0, cache_dir=str(tmp_path / "cache"), cache_mb=1)
    fs, root = open_filesystem(url)
    blobs = {s.path: fs.cat_file(f"{root}/{s.path}") for s in m.shards}
    fs.rm([f"{root}/{s.path}" for s in m.shards])
    again = epoch_of(url, 0, 1, decode_workers=0, cache_dir=str(tmp_path / "cache"), cache_mb=1)
    assert again == first and len(first) == 240
    # a bound smaller than the dataset evicts the least recently used shards (real bytes: every shard kept verifies)
    assert len(m.shards) >= 4
    cache = LocalCache(tmp_path / "small", max_bytes=total // 3)
    for s in m.shards:
        cache.put(m.dataset_hash, s, blobs[s.path])
        time.sleep(0.01)
    held = [s for s in m.shards if cache.get(m.dataset_hash, s) is not None]
    assert 0 < cache.size() <= total // 3 and 0 < len(held) < len(m.shards)
    assert m.shards[-1] in held and m.shards[0] not in held  # the newest kept, the oldest evicted
    assert sum(s.bytes for s in held) == cache.size()


def test_cli_ingest_exit_codes_and_summary(stack, faces, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes((faces / f"{i:06d}.png").read_bytes())
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    (src / "readme.txt").write_text("hi")
    ok = ganray(stack.home, "data", "ingest", str(src), "s3://ganray/tests/cli", "--resolution", "8",
                "--format", "jpg", "--workers", "1")
    assert "ingested 3 images into 1 shards" in ok.stdout and "8x8" in ok.stdout
    assert "skipped 2 files" in ok.stderr and "not a readable image" in ok.stderr
    report = json.loads(open_filesystem("s3://ganray/tests/cli")[0].cat_file("ganray/tests/cli/ingest_report.json"))
    assert report["ingested"] == 3 and {s["file"] for s in report["skipped"]} == {"broken.png", "readme.txt"}
    (src / "0.png").unlink(), (src / "1.png").unlink(), (src / "2.png").unlink()
    bad = ganray(stack.home, "data", "ingest", str(src), "s3://ganray/tests/cli-none", check=False)
    assert bad.returncode == 1 and "nothing ingested" in bad.stderr
    gone = ganray(stack.home, "data", "ingest", str(faces), "s3://no-such-bucket/x", check=False)
    assert gone.returncode == 1 and "unreachable or not writable" in gone.stderr and "ingest" not in gone.stdout


def test_unreachable_bucket_is_found_before_any_work(stack, faces):
    with pytest.raises(IngestError, match="no-such-bucket.*unreachable or not writable"):
        ingest(faces, "s3://no-such-bucket/x", faces / "labels.csv")


def test_ingest_from_an_s3_folder_and_an_s3_zip(stack, faces, tmp_path):
    import zipfile

    fs, root = open_filesystem("s3://ganray/tests/raw")
    names = [f"{i:06d}.png" for i in range(6)]
    fs.pipe({f"{root}/imgs/{n}": (faces / n).read_bytes() for n in names})
    fs.pipe_file(f"{root}/imgs/broken.png", b"not a png")
    from_folder = ingest("s3://ganray/tests/raw/imgs", "s3://ganray/tests/from-folder", workers=1)
    assert from_folder.ingested == 6 and [s["file"] for s in from_folder.skipped] == ["broken.png"]
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n in names:
            zf.writestr(f"a/{n}", (faces / n).read_bytes())
        zf.writestr("../up.png", (faces / names[0]).read_bytes())
    fs.put_file(str(archive), f"{root}/imgs.zip")
    from_zip = ingest("s3://ganray/tests/raw/imgs.zip", "s3://ganray/tests/from-zip", workers=1)
    assert from_zip.ingested == 6 and from_zip.skipped == [{"file": "../up.png", "reason":
                                                            "path climbs out of the archive with '..' (refused)"}]
    assert from_zip.manifest.dataset_hash != from_folder.manifest.dataset_hash  # keys differ (a/ prefix)
    with pytest.raises(IngestError, match="source not found"):
        ingest("s3://ganray/tests/raw/nothing-here", "s3://ganray/tests/x")


def test_torch_batches_roll_over_epochs_with_an_exact_state(s3_faces):
    import torch

    from trainers.data.stream.shard_stream import torch_batches

    s = ShardStream(s3_faces, 0, 2, seed=1, decode_workers=1)
    it = torch_batches(s, 50)
    shapes = []
    for _ in range(3):  # 150 samples of this rank's 120 per epoch: rolls into epoch 1
        images, samples = next(it)
        shapes.append((tuple(images.shape), images.dtype, len(samples)))
    assert shapes == [((50, 3, 16, 16), torch.uint8, 50)] * 3
    assert s.epoch == 1 and s.state_dict()["consumed"] == 2 * 30
    s.close()
