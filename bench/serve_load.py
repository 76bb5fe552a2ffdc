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


def ratios(b: dict, one: dict) -> dict:
    return {"requests_per_s": round(b["requests_per_s"] / one["requests_per_s"], 2),
            "p50_latency": round(b["latency_ms"]["p50"] / one["latency_ms"]["p50"], 2),
            "p99_latency": round(b["latency_ms"]["p99"] / one["latency_ms"]["p99"], 2)}


def run(args, home: Path) -> dict:
    from deploy.serve_config import ServeConfig
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
        for mode, app_args in MODES.items():
            config = ServeConfig(parse_ref("bench-serve@champion", need_version=True), **app_args)
            req = serving.ServeRequest(config, port=port)
            url, _ = serving.serve(req, endpoints)
            try:
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
        "load": {"clients": args.clients, "measured_requests": args.requests, "warmup": args.warmup,
                 "request": {"n": [1, 4], "tags": 2, "format": "png"}},
        "modes": MODES, "results": out["results"],
        "batched_over_one_per_pass": {f"n{n}": ratios(res[f"n{n}_batched"], res[f"n{n}_one_per_pass"]) for n in (1, 4)},
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["batched_over_one_per_pass"]))


if __name__ == "__main__":
    main()
