"""Decoded images/s: ganray's ShardStream against MosaicML Streaming, WebDataset and Ray Data.

One dataset of real-photo crops (random squares of scikit-learn's and
matplotlib's sample photos, resized to 64x64), ingested by ganray into
WebDataset shards as JPEG and as PNG, on a moto S3 server on loopback that this
script starts and stops. Every reader runs in a fresh process against the same
server, on the same machine (all of its cores), in interleaved rounds; the
result per reader is the median over rounds. Rates are steady-state: decoded
images from the first sample on, divided by the time from the first sample to
the last (startup is reported apart).

- ganray: ``ShardStream`` (decode processes = cores), 2 epochs. With the
  default 256 MB window the 96 MB of shards stay staged and epoch 2 is not
  downloaded again; the "8 MB windows" row (8 MB read-ahead) downloads every
  epoch; with the default 64 MB read-ahead part of it stays staged; the
  "shards through s3fs" row downloads every epoch with s3fs's ``cat_file``
  instead of presigned GETs; the "local cache" row also keeps shards on local disk;
- WebDataset: ``WebDataset(urls).decode("rgb8")`` over HTTP, in the consuming
  process, and under a torch DataLoader with 2 workers; 2 passes;
- MosaicML Streaming: MDS of the same JPEG bytes, ``StreamingDataset`` +
  DataLoader with 2 workers, decoded with PIL; 2 epochs (the second from its
  local cache, as it is designed);
- Ray Data: ``read_webdataset`` on the shards and ``read_images`` on single
  JPEG files (a subset: it is slow), on a local Ray head with 2 CPUs;
- ceiling: decoding the JPEG bytes from memory in one process per core (with
  ganray's decoder, the fastest here, and with plain ``Image.open``);
- raw download: all shards fetched with 8 threads, as images/s.

Run: ``.venv/bin/python bench/data_stream.py`` (``--help`` for sizes). Needs the
``bench`` extra (see bench/README.md). Writes bench/results/data_stream.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
BUCKET = "bench"
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1"}


# -- servers -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(p: subprocess.Popen, grace: float = 5.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Servers:
    """moto's S3 server, and a Ray head when asked for; both in their own process groups, stopped by PID."""

    def __init__(self, work: Path):
        self.work, self.ray, self.ray_address = work, None, None
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=open(work / "moto.log", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.env = {**os.environ, **KEYS, "AWS_ENDPOINT_URL_S3": self.endpoint, "S3_ENDPOINT_URL": self.endpoint,
                    "RAY_USAGE_STATS_ENABLED": "0"}
        for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "RAY_ADDRESS"):
            self.env.pop(k, None)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("AWS_", "S3_"))})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=BUCKET)

    def start_ray(self) -> str:
        ports = {name: free_port() for name in ("gcs", "nm", "om", "client", "metrics", "agent_grpc", "agent_http",
                                               "rtenv", "dash")}
        temp = tempfile.mkdtemp(prefix="grb-", dir="/tmp")
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1", "--port", str(ports["gcs"]), "--temp-dir", temp,
               "--include-dashboard", "false", "--dashboard-port", str(ports["dash"]),
               "--node-manager-port", str(ports["nm"]), "--object-manager-port", str(ports["om"]),
               "--ray-client-server-port", str(ports["client"]), "--metrics-export-port", str(ports["metrics"]),
               "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
               "--dashboard-agent-listen-port", str(ports["agent_http"]),
               "--runtime-env-agent-port", str(ports["rtenv"]), "--num-cpus", "2", "--num-gpus", "0"]
        self.ray_temp = temp
        token = self.work / "ray_auth_token"  # token auth stays on; the readers get the same token file
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        self.ray = subprocess.Popen(cmd, stdout=open(self.work / "ray.log", "wb"), stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)
        self.ray_address = f"127.0.0.1:{ports['gcs']}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ports["gcs"]), 1).close()
                time.sleep(3)
                return self.ray_address
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not start (see {self.work / 'ray.log'})")

    def close(self) -> None:
        if self.ray is not None:
            stop_group(self.ray, grace=3)
            shutil.rmtree(self.ray_temp, ignore_errors=True)
        stop_group(self.moto)


# -- data ------------------------------------------------------------------------
def photos():
    import matplotlib
    import numpy as np
    import sklearn
    from PIL import Image

    paths = sorted((Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))
    paths += sorted((Path(matplotlib.get_data_path()) / "sample_data").glob("*.jpg"))
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def make_sources(folder: Path, n: int, seed: int = 0) -> None:
    """n random square crops (64..400 px) of the sample photos, resized to 64x64, as lossless PNGs."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng, images = np.random.default_rng(seed), photos()
    for i in range(n):
        a = images[i % len(images)]
        s = int(rng.integers(64, min(400, *a.shape[:2])))
        y, x = int(rng.integers(0, a.shape[0] - s)), int(rng.integers(0, a.shape[1] - s))
        img = Image.fromarray(a[y:y + s, x:x + s]).resize((64, 64), Image.Resampling.BICUBIC)
        img.save(folder / f"{i:06d}.png", compress_level=1)


def shard_jpegs(url: str) -> list[bytes]:
    """The JPEG bytes of a ganray dataset, in manifest order."""
    from trainers.data.storage import open_filesystem
    from trainers.data.stream.shard_stream import read_manifest
    from trainers.data.stream.tarindex import index_tar

    m = read_manifest(url)
    fs, root = open_filesystem(url)
    out = []
    for s in m.shards:
        data = fs.cat_file(f"{root}/{s.path}")
        _, images, _ = index_tar(data, s.path)
        out += [data[o:o + n] for o, n in images]
    return out


def prepare(work: Path, n: int, files: int) -> dict:
    from trainers.data.ingest.local import ingest
    from trainers.data.storage import open_filesystem

    t0 = time.perf_counter()
    make_sources(work / "src", n)
    made = time.perf_counter()
    info = {"images": n}
    for fmt, mb in (("jpg", 2.0), ("png", 4.0)):
        t = time.perf_counter()
        m = ingest(work / "src", f"s3://{BUCKET}/{fmt}", resolution=64, fmt=fmt, shard_mb=mb, workers=2).manifest
        info[fmt] = {"shards": len(m.shards), "bytes": sum(s.bytes for s in m.shards),
                     "ingest_s": round(time.perf_counter() - t, 1)}
    jpegs = shard_jpegs(f"s3://{BUCKET}/jpg")
    (work / "jpegs.bin").write_bytes(b"".join(len(j).to_bytes(4, "little") + j for j in jpegs))
    fs, _ = open_filesystem(f"s3://{BUCKET}/x")
    fs.pipe({f"{BUCKET}/files/{i:06d}.jpg": j for i, j in enumerate(jpegs[:files])})
    info["files"] = files
    write_mds(work / "mds", jpegs)
    fs.put(str(work / "mds"), f"{BUCKET}/mds", recursive=True)
    info["mds_shards"] = len(list((work / "mds").glob("*.mds")))
    info["prepare_s"] = round(time.perf_counter() - t0, 1)
    info["make_sources_s"] = round(made - t0, 1)
    return info


def load_jpegs(work: Path) -> list[bytes]:
    data, out, pos = (work / "jpegs.bin").read_bytes(), [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "little")
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def import_streaming():
    """MosaicML Streaming without torchvision/transformers (they do not import here): stub what it imports eagerly."""
    for name in ("streaming.vision", "streaming.text", "streaming.multimodal", "transformers",
                 "transformers.feature_extraction_utils", "transformers.tokenization_utils_base"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["transformers.feature_extraction_utils"].BatchFeature = dict
    sys.modules["transformers.tokenization_utils_base"].BatchEncoding = dict
    import streaming

    return streaming


def write_mds(out: Path, jpegs: list[bytes]) -> None:
    streaming = import_streaming()
    with streaming.MDSWriter(out=str(out), columns={"key": "str", "jpg": "bytes"}, size_limit=2 << 20) as w:
        for i, j in enumerate(jpegs):
            w.write({"key": f"{i:06d}", "jpg": j})


# -- readers (each runs in a child process) ------------------------------------------
def pil_decode(data: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def timed(batches) -> dict:
    """Steady-state rate of an iterator of image counts."""
    t0 = time.perf_counter()
    first, n, n_first = None, 0, 0
    for k in batches:
        if first is None:
            first, n_first = time.perf_counter(), k
        n += k
    end = time.perf_counter()
    return {"images": n, "startup_s": round(first - t0, 3), "seconds": round(end - first, 3),
            "img_per_s": round((n - n_first) / max(end - first, 1e-9), 1), "end_to_end_img_per_s": round(n / (end - t0), 1)}


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_ganray(cfg: dict) -> dict:
    from trainers.data.stream.shard_stream import ShardStream

    cache = tempfile.mkdtemp(prefix="ganray-cache-") if cfg.get("cache") else None
    if cfg.get("signed_get") is False:  # shards through s3fs's cat_file, as before presigned GETs
        os.environ["GANRAY_S3_SIGNED_GET"] = "0"
    s = ShardStream(f"s3://{BUCKET}/{cfg['fmt']}", decode_workers=cfg.get("workers"), cache_dir=cache,
                    window_mb=cfg.get("window_mb", 256), readahead_mb=cfg.get("readahead_mb"))
    cpu = {}

    def counts():
        for epoch in range(2):
            for i, _x in enumerate(s):
                if epoch == 0 and i == 0:  # CPU from the first sample on, like the rate
                    pids = [p.pid for p in s._pool.procs]
                    cpu.update(main=time.process_time(), workers=sum(_proc_cpu(p) for p in pids), pids=pids)
                yield 1

    out = timed(counts())
    main = time.process_time() - cpu["main"]
    workers = sum(_proc_cpu(p) for p in cpu["pids"]) - cpu["workers"]
    n = out["images"] - 1
    out["cpu_us_per_img"] = {"reader_process": round(main / n * 1e6, 1), "decode_processes": round(workers / n * 1e6, 1),
                             "total": round((main + workers) / n * 1e6, 1)}
    s.close()
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
    return out


def shard_urls(cfg: dict, fmt: str = "jpg") -> list[str]:
    """Presigned HTTP URLs of the shards (WebDataset reads http(s) through curl)."""
    import boto3

    from trainers.data.stream.shard_stream import read_manifest

    m = read_manifest(f"s3://{BUCKET}/{fmt}")
    s3 = boto3.client("s3", endpoint_url=cfg["endpoint"])
    return [s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": f"{fmt}/{s.path}"},
                                      ExpiresIn=3600) for s in m.shards]


def read_webdataset(cfg: dict) -> dict:
    import webdataset as wds

    urls = [f"pipe:curl -s -f '{u}'" for u in shard_urls(cfg)] * 2
    if not cfg.get("loader"):
        ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").to_tuple("jpg")
        return timed(1 for _ in ds)
    import torch

    ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only, empty_check=False)
          .decode("rgb8").to_tuple("jpg").batched(64))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    return timed(len(b[0]) for b in loader)


def read_mosaic(cfg: dict) -> dict:
    import numpy as np
    import torch

    streaming = import_streaming()
    streaming.base.util.clean_stale_shared_memory()
    local = tempfile.mkdtemp(prefix="mds-cache-")

    class Images(streaming.StreamingDataset):
        def __getitem__(self, i):
            return pil_decode(super().__getitem__(i)["jpg"])

    ds = Images(remote=f"s3://{BUCKET}/mds", local=local, shuffle=False, batch_size=64)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2, collate_fn=lambda b: np.stack(b))

    def counts():
        for _ in range(2):
            for b in loader:
                yield len(b)

    try:
        return timed(counts())
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _ray_fs(cfg: dict):
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(endpoint_override=cfg["endpoint"], scheme="http", access_key=KEYS["AWS_ACCESS_KEY_ID"],
                                   secret_key=KEYS["AWS_SECRET_ACCESS_KEY"], region="us-east-1")


def read_ray(cfg: dict) -> dict:
    import ray

    ray.init(address=cfg["ray_address"], logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if cfg["kind"] == "webdataset":
        ds = ray.data.read_webdataset(f"{BUCKET}/jpg/", filesystem=_ray_fs(cfg), file_extensions=["tar"])
    else:
        ds = ray.data.read_images(f"{BUCKET}/files/", filesystem=_ray_fs(cfg), mode="RGB")
    column = "jpg" if cfg["kind"] == "webdataset" else "image"
    out = timed(len(b[column]) for b in ds.iter_batches(batch_size=64, batch_format="numpy"))
    ray.shutdown()
    return out


def _decode_all(args) -> tuple[int, float]:
    path, part, parts, how, barrier_path = args
    from trainers.data.stream.decode import decode_image

    jpegs = load_jpegs(Path(path))[part::parts]
    fn = (lambda b: decode_image(b, 64)) if how == "ganray" else pil_decode
    for b in jpegs[:200]:  # warm up
        fn(b)
    while not os.path.exists(barrier_path):
        time.sleep(0.001)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(3):
        for b in jpegs:
            fn(b)
    return 3 * len(jpegs), time.perf_counter() - t, time.process_time() - c


def ceiling(cfg: dict) -> dict:
    import multiprocessing as mp

    procs = cfg["procs"]
    barrier = tempfile.mktemp(prefix="ceiling-go-")
    with mp.get_context("spawn").Pool(procs) as pool:
        res = pool.map_async(_decode_all, [(cfg["work"], i, procs, cfg["how"], barrier) for i in range(procs)])
        time.sleep(2.0)
        Path(barrier).touch()
        results = res.get()
    os.unlink(barrier)
    # each process's own rate, summed: robust to one of them starting late, and the higher (stricter) ceiling
    n, slowest = sum(r[0] for r in results), max(r[1] for r in results)
    return {"images": n, "seconds": round(slowest, 3), "img_per_s": round(sum(r[0] / r[1] for r in results), 1),
            "all_done_img_per_s": round(n / slowest, 1),
            "cpu_us_per_img": round(sum(r[2] for r in results) / n * 1e6, 1)}


def download(cfg: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from trainers.data.storage import open_filesystem
    from trainers.data.stream.shard_stream import read_manifest

    url = f"s3://{BUCKET}/jpg"
    m = read_manifest(url)
    fs, root = open_filesystem(url)
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        total = sum(len(b) for b in ex.map(lambda s: fs.cat_file(f"{root}/{s.path}"), m.shards))
    dt = time.perf_counter() - t
    return {"images": m.num_samples, "seconds": round(dt, 3), "img_per_s": round(m.num_samples / dt, 1),
            "MB_per_s": round(total / dt / 1e6, 1)}


READERS = {
    "ceiling: JPEG decode from memory, 2 procs (ganray decoder)": (ceiling, {"how": "ganray", "procs": 2}),
    "ganray (jpg)": (read_ganray, {"fmt": "jpg"}),
    "ganray (jpg, local cache: epoch 2 from disk)": (read_ganray, {"fmt": "jpg", "cache": True}),
    "ganray (jpg, 8 MB windows: every epoch downloaded)": (read_ganray, {"fmt": "jpg", "window_mb": 8,
                                                                          "readahead_mb": 8}),
    "ganray (jpg, 8 MB windows, 64 MB read-ahead)": (read_ganray, {"fmt": "jpg", "window_mb": 8}),
    "ganray (jpg, 8 MB windows, shards through s3fs)": (read_ganray, {"fmt": "jpg", "window_mb": 8,
                                                                       "readahead_mb": 8, "signed_get": False}),
    "ganray (png)": (read_ganray, {"fmt": "png"}),
    "WebDataset, no loader": (read_webdataset, {}),
    "WebDataset, DataLoader 2 workers": (read_webdataset, {"loader": True}),
    "MosaicML Streaming, DataLoader 2 workers": (read_mosaic, {}),
    "Ray Data read_webdataset": (read_ray, {"kind": "webdataset"}),
    "Ray Data read_images (single files)": (read_ray, {"kind": "images"}),
    "JPEG decode from memory, 2 procs (Image.open)": (ceiling, {"how": "pil", "procs": 2}),
    "JPEG decode from memory, 1 proc (ganray decoder)": (ceiling, {"how": "ganray", "procs": 1}),
    "raw shard download, 8 threads": (download, {}),
}
ONCE = {"Ray Data read_images (single files)"}  # slow: one round


def run_child(name: str, cfg: dict, env: dict, timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--config", json.dumps(cfg)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20480)
    ap.add_argument("--files", type=int, default=2000, help="single JPEG files for Ray Data read_images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="reader names to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_stream.json"))
    ap.add_argument("--child")
    ap.add_argument("--config")
    args = ap.parse_args()
    if args.child:
        fn, _ = READERS[args.child]
        print("RESULT " + json.dumps(fn(json.loads(args.config))), flush=True)
        return
    work = Path(tempfile.mkdtemp(prefix="ganray-bench-"))
    servers = None
    try:
        servers = Servers(work)
        print(f"preparing {args.images} images in {work} ...", flush=True)
        data = prepare(work, args.images, args.files)
        print(json.dumps(data), flush=True)
        names = [n for n in READERS if not args.only or n in args.only]
        if any(READERS[n][0] is read_ray for n in names):
            servers.start_ray()
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names:
                if name in ONCE and r:
                    continue
                cfg = {**READERS[name][1], "endpoint": servers.endpoint, "ray_address": servers.ray_address,
                       "work": str(work)}
                res = run_child(name, cfg, servers.env)
                runs[name].append(res)
                print(f"round {r}: {name}: {res.get('img_per_s', res.get('error'))}", flush=True)
        summary = summarise(runs)
        result = {"machine": machine(), "dataset": data, "rounds": args.rounds, "runs": runs, "summary": summary,
                  "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(table(summary))
    finally:
        if servers is not None:
            servers.close()
        shutil.rmtree(work, ignore_errors=True)


def summarise(runs: dict[str, list[dict]]) -> dict:
    med = {n: statistics.median([r["img_per_s"] for r in rs if "img_per_s" in r]) for n, rs in runs.items()
           if any("img_per_s" in r for r in rs)}
    ceil_name = "ceiling: JPEG decode from memory, 2 procs (ganray decoder)"
    out = {"median_img_per_s": med}
    if ceil_name in runs and "ganray (jpg)" in runs:
        ratios = [g["img_per_s"] / c["img_per_s"] for g, c in zip(runs["ganray (jpg)"], runs[ceil_name])
                  if "img_per_s" in g and "img_per_s" in c]
        out["ganray_jpg_over_ceiling_per_round"] = [round(r, 3) for r in ratios]
        out["ganray_jpg_over_ceiling_median"] = round(statistics.median(ratios), 3) if ratios else None
        peers = [n for n in med if not n.startswith(("ganray", "ceiling", "JPEG", "raw"))]
        out["ganray_jpg_ahead_of_every_peer"] = all(med["ganray (jpg)"] > med[p] for p in peers)
        g_cpu = [r["cpu_us_per_img"]["total"] for r in runs["ganray (jpg)"] if "cpu_us_per_img" in r]
        c_cpu = [r["cpu_us_per_img"] for r in runs[ceil_name] if "cpu_us_per_img" in r]
        if g_cpu and c_cpu:
            out["cpu_us_per_img"] = {"ganray (jpg), reader + decode processes": statistics.median(g_cpu),
                                     "ceiling decode": statistics.median(c_cpu)}
            out["cpu_efficiency"] = round(statistics.median(c_cpu) / statistics.median(g_cpu), 3)
    return out


def table(summary: dict) -> str:
    med = summary["median_img_per_s"]
    lines = ["| reader | decoded images/s (median) |", "| --- | ---: |"]
    lines += [f"| {n} | {v:,.0f} |" for n, v in med.items()]
    if "cpu_efficiency" in summary:
        lines.append(f"\nCPU per decoded image: {summary['cpu_us_per_img']} -> efficiency {summary['cpu_efficiency']}")
    if "ganray_jpg_over_ceiling_median" in summary:
        lines.append(f"\nganray (jpg) / ceiling, per round: {summary['ganray_jpg_over_ceiling_per_round']} "
                     f"(median {summary['ganray_jpg_over_ceiling_median']})")
    return "\n".join(lines)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "cpu": _cpu_model(), "gpu": None,
            "load_average_at_end": os.getloadavg()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
