"""Serving load benchmark: requests/s and latency of `ganray serve`, batched against one request per pass.

Starts a private embedded stack (Ray head with token auth, MLflow server; stopped by PID at the
end, even on failure), registers an untrained tag-conditional generator shaped as
`examples/cond-dcgan-faces.yaml` but at 64x64 (cond-dcgan, z 64, channels 32, embed 32; the
weights do not change the cost), and deploys it through `orchestrator.cluster.serving` twice, one after the
other, with one replica of one CPU each:

- ``batched``: Ray Serve batching on the replica (max_batch_size 16, batch_wait_s 0.01);
- ``one_per_pass``: max_batch_size 1, one request per forward pass.

Against each, two bounded loads on loopback, one after the other: CLIENTS concurrent clients, each
sending requests back to back (seed varies, two tags, PNG answer; n 1, then n 4) until REQUESTS have
been answered in all (after WARMUP requests that are not counted), every request with a timeout. Reported: requests/s
and images/s over the measured window, p50/p90/p99 latency, the mean number of requests that
shared a forward pass (X-Ganray-Batch), and the status codes.

Then the ``overload`` row: the same model deployed with a small bounded queue (``OVERLOAD``: batches
of 8, 8 queued, so a replica holds 16 generate requests; request_timeout_s 10) against 4x more
concurrent clients than it holds (64), each sending n 4 requests back to back for OVERLOAD_S seconds
and waiting out ``Retry-After`` after a 503, as a well-behaved client does. Reported: the status
codes (every answer must be a 200 or a 503 with Retry-After, within the timeout), the slowest answer,
p50/p99 of the 200s, and the replica's RSS sampled every 0.25 s (its largest against its RSS before
the load: the queue is bounded, so memory is too).

    .venv/bin/python bench/serve_load.py [--clients 16] [--requests 400] [--json bench/results/serve_load.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = {"arch": "cond-dcgan", "z_dim": 64, "channels": 32, "embed_dim": 32, "conditioning": "tags"}
RESOLUTION, VOCABULARY = 64, ["blonde hair", "blue eyes", "red hair", "green eyes", "hat", "glasses", "ribbon", "blush"]
MODES = {"batched": {"max_batch_size": 16, "batch_wait_s": 0.01}, "one_per_pass": {"max_batch_size": 1}}
OVERLOAD = {"max_batch_size": 8, "max_queued_requests": 8, "request_timeout_s": 10.0}
OVERLOAD_S = 60.0


def register(tracking_uri: str) -> int:
    """An untrained generator of MODEL's size as version 1 of `bench-serve`, alias champion."""
    import torch
    from mlflow.tracking import MlflowClient

    from orchestrator.registry.versions import register_generator
    from trainers.generator_metadata import GeneratorMetadata
    from trainers.networks import build_models
    from trainers.spec import ModelSpec

    torch.manual_seed(0)
    g, _ = build_models(ModelSpec(**MODEL), RESOLUTION, c_dim=len(VOCABULARY))
    c = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    run_id = c.create_run(c.create_experiment("bench-serve")).info.run_id
    meta = GeneratorMetadata(g.config, VOCABULARY, "tags", step=0)
    version = register_generator(c, run_id, "bench-serve", g.eval(), meta, "bench", "untrained")
    c.set_terminated(run_id)
    c.set_registered_model_alias("bench-serve", "champion", str(version))
    return version


def load(url: str, clients: int, total: int, warmup: int, n: int, timeout: float = 60.0) -> dict:
    """CLIENTS threads sending requests back to back until `total` are answered after `warmup`; stops by itself."""
    import requests

    lock, counter = threading.Lock(), {"sent": 0}
    records: list[tuple[float, float, int, int]] = []  # start, latency, status, batch

    def client(k: int) -> None:
        session = requests.Session()
        while True:
            with lock:
                i = counter["sent"]
                if i >= warmup + total:
                    return
                counter["sent"] += 1
            body = {"seed": 1000 * k + i, "n": n, "tags": [VOCABULARY[i % 8], VOCABULARY[(i + 3) % 8]]}
            t0 = time.perf_counter()
            try:
                r = session.post(url + "generate", json=body, timeout=timeout)
                status, batch = r.status_code, int(r.headers.get("X-Ganray-Batch", 0))
            except requests.RequestException:
                status, batch = 0, 0
            if i >= warmup:
                with lock:
                    records.append((t0, time.perf_counter() - t0, status, batch))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarise(records, n)


def summarise(records: list[tuple[float, float, int, int]], n: int) -> dict:
    ok = [r for r in records if r[2] == 200]
    lat = sorted(r[1] for r in ok)
    window = max(r[0] + r[1] for r in records) - min(r[0] for r in records)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"requests": len(records), "ok": len(ok), "statuses": sorted({r[2] for r in records}),
            "window_s": round(window, 2), "requests_per_s": round(len(ok) / window, 2),
            "images_per_s": round(n * len(ok) / window, 1), "latency_ms": {
                "p50": round(q[49] * 1000, 1), "p90": round(q[89] * 1000, 1), "p99": round(q[98] * 1000, 1),
                "mean": round(statistics.fmean(lat) * 1000, 1)},
            "mean_requests_per_pass": round(statistics.fmean(r[3] for r in ok), 2)}


def overload(url: str, clients: int, seconds: float, timeout: float, replica_pid: int) -> dict:
    """clients threads sending n 4 requests back to back for seconds (sleeping Retry-After after a 503) while
    the replica's RSS is sampled; every answer's status, latency and Retry-After."""
    import psutil
    import requests

    replica, stop_at = psutil.Process(replica_pid), time.perf_counter() + seconds
    rss_before, rss, lock = replica.memory_info().rss, [], threading.Lock()
    records: list[tuple[float, int, str | None]] = []  # latency, status, Retry-After
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            rss.append(replica.memory_info().rss)

    def client(k: int) -> None:
        session, i = requests.Session(), 0
        while time.perf_counter() < stop_at:
            body = {"seed": 1000 * k + i, "n": 4, "tags": [VOCABULARY[i % 8], VOCABULARY[(i + 3) % 8]]}
            t0 = time.perf_counter()
            try:
                r = session.post(url + "generate", json=body, timeout=timeout + 30)
                status, wait = r.status_code, r.headers.get("Retry-After")
            except requests.RequestException:
                status, wait = 0, None
            with lock:
                records.append((time.perf_counter() - t0, status, wait))
            i += 1
            if status == 503:
                time.sleep(float(wait or 1))

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    return summarise_overload(records, rss_before, rss, timeout)


def summarise_overload(records: list[tuple[float, int, str | None]], rss_before: int, rss: list[int],
                       timeout: float) -> dict:
    ok = sorted(r[0] for r in records if r[1] == 200)
    q = statistics.quantiles(ok, n=100, method="inclusive")
    refused = [r for r in records if r[1] == 503]
    statuses = {str(code): sum(1 for r in records if r[1] == code) for code in sorted({r[1] for r in records})}
    return {"requests": len(records), "statuses": statuses, "ok_latency_ms": {
                "p50": round(q[49] * 1000, 1), "p99": round(q[98] * 1000, 1)},
            "slowest_answer_s": round(max(r[0] for r in records), 2), "request_timeout_s": timeout,
            "every_answer_200_or_503": set(statuses) <= {"200", "503"},
            "every_503_has_retry_after": all(r[2] for r in refused),
            "every_answer_within_timeout": max(r[0] for r in records) <= timeout + 5.0,
            "replica_rss_mb": {"before": round(rss_before / 2 ** 20, 1), "max": round(max(rss) / 2 ** 20, 1),
                               "last": round(rss[-1] / 2 ** 20, 1), "samples": len(rss)}}


def replica_pid(endpoints, name: str) -> int:
    from orchestrator.cluster.serving import ServeApi

    details = ServeApi(endpoints.dashboard_url()).details()
    return int(details["applications"][name]["deployments"]["generator"]["replicas"][0]["pid"])


def ratios(b: dict, one: dict) -> dict:
    return {"requests_per_s": round(b["requests_per_s"] / one["requests_per_s"], 2),
            "p50_latency": round(b["latency_ms"]["p50"] / one["latency_ms"]["p50"], 2),
            "p99_latency": round(b["latency_ms"]["p99"] / one["latency_ms"]["p99"], 2)}


def run(args, home: Path) -> dict:
    import secrets

    from deploy.serve_config import ServeConfig, token_digest
    from orchestrator.cluster import serving
    from orchestrator.cluster.endpoints import use_cluster_environment
    from orchestrator.stack.local_stack import LocalStack
    from orchestrator.stack.processes import free_port
    from trainers.model_ref import parse_ref

    stack = LocalStack(home)
    try:
        stack.up()
        endpoints = use_cluster_environment()
        version = register(endpoints.mlflow_uri)
        port, results = free_port(), {}
        digest = token_digest(secrets.token_urlsafe(32))  # nothing here calls /reload
        for mode, app_args in {**MODES, "overload": OVERLOAD}.items():
            if mode not in args.modes:
                continue
            config = ServeConfig(parse_ref("bench-serve@champion", need_version=True), token_sha256=digest, **app_args)
            url, _, _ = serving.serve(serving.ServeRequest(config, port=port), endpoints)
            try:
                if mode == "overload":
                    clients = 4 * config.generate_capacity()
                    results[mode] = {"clients": clients, "holds": config.generate_capacity(), **overload(
                        url, clients, args.overload_s, config.request_timeout_s, replica_pid(endpoints, "bench-serve"))}
                    print(mode, json.dumps(results[mode]), file=sys.stderr, flush=True)
                    continue
                for n in (1, 4):
                    results[f"n{n}_{mode}"] = load(url, args.clients, args.requests, args.warmup, n)
                    print(f"n{n}_{mode}", json.dumps(results[f"n{n}_{mode}"]), file=sys.stderr, flush=True)
            finally:
                serving.stop("bench-serve", endpoints)
        return {"version": version, "results": results}
    finally:
        stack.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=400, help="measured requests per mode")
    p.add_argument("--warmup", type=int, default=32)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "serve_load.json"))
    p.add_argument("--modes", nargs="+", default=[*MODES, "overload"], choices=[*MODES, "overload"])
    p.add_argument("--overload-s", type=float, default=OVERLOAD_S, help="seconds of the overload row")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gsb-", dir="/tmp"))
    os.environ["GANRAY_HOME"] = str(home)
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        os.environ.pop(var, None)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        out = run(args, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    res = out["results"]
    report = {
        "benchmark": "serve_load", "measured": started,
        "machine": f"2-core CPU VM ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), no GPU",
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "model": {**MODEL, "resolution": RESOLUTION, "tags": len(VOCABULARY), "weights": "untrained"},
        "server": "ganray serve: 1 replica, num_cpus 1, Ray Serve HTTP proxy on loopback",
        "note": args.note,
        "load": {"clients": args.clients, "measured_requests": args.requests, "warmup": args.warmup,
                 "request": {"n": [1, 4], "tags": 2, "format": "png"}},
        "modes": {**MODES, "overload": {**OVERLOAD, "seconds": args.overload_s, "request": {"n": 4, "tags": 2}}},
        "results": out["results"],
    }
    if all(f"n{n}_{mode}" in res for n in (1, 4) for mode in MODES):
        report["batched_over_one_per_pass"] = {f"n{n}": ratios(res[f"n{n}_batched"], res[f"n{n}_one_per_pass"])
                                               for n in (1, 4)}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report.get(k) for k in ("batched_over_one_per_pass",)} | {"overload": res.get("overload")}))


if __name__ == "__main__":
    main()
