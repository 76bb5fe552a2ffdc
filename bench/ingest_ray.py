"""Ingest throughput: the local ingest against `--ray` on a local multi-node cluster of the same cores.

One run, interleaved rounds. The dataset: N synthetic tagged faces (``ganray data synth``) at
--source-resolution, PNG, in a folder; each ingest decodes, centre-crops, resizes to
--resolution and re-encodes as PNG into a folder (``file://``, a path every node of the local
cluster sees). Rows:

- ``local``: ``trainers.data.ingest.local.ingest`` with ``--workers`` = the cores (a process pool).
- ``ray``: ``orchestrator.cluster.ingest.ingest_on_ray`` on a Ray cluster of a head with 0 CPUs and one
  1-CPU worker node per core (tests/cluster.py: each node its own ``ray start``, token auth on,
  explicit ports), connected before the clock starts.

Measured: images per second of wall time from the call to its return (listing, labels, shards,
manifest: everything the command does but start Python and connect). Both produce the same
dataset (its hash is checked every round).

    python bench/ingest_ray.py --json bench/results/ingest_ray.json [--n 4000] [--rounds 3]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cluster import LocalCluster  # noqa: E402


def local_round(src: Path, dest: Path, args) -> tuple[float, str]:
    from trainers.data.ingest.local import ingest

    t0 = time.perf_counter()
    report = ingest(src, f"file://{dest}", src / "labels.csv", args.resolution, "png", 64, workers=args.cores)
    return time.perf_counter() - t0, report.manifest.dataset_hash


def ray_round(src: Path, dest: Path, args, address: str) -> tuple[float, str]:
    from orchestrator.cluster.ingest import ingest_on_ray

    t0 = time.perf_counter()
    report = ingest_on_ray(f"file://{src}", f"file://{dest}", src / "labels.csv", args.resolution, "png", 64,
                           ray_address=address)
    return time.perf_counter() - t0, report.manifest.dataset_hash


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--source-resolution", type=int, default=256)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ingest_ray.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gbi-", dir="/tmp"))
    cluster = LocalCluster(work / "cluster", tuned=False)
    try:
        result = run(args, work, cluster)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


def run(args, work: Path, cluster: LocalCluster) -> dict:
    from trainers.data.ingest.synth import write_synthetic_dataset

    src = work / "src"
    write_synthetic_dataset(src, args.n, args.source_resolution, seed=0)
    load_before = os.getloadavg()
    cluster.start_head()
    for i in range(args.cores):
        cluster.add_node(f"n{i}", num_cpus=1)
    os.environ.update({k: v for k, v in cluster.client_env().items() if k.startswith("RAY_")})
    from orchestrator.job.ray_runtime import ray_init

    ray_init(cluster.address)  # connected before any clock starts
    rounds = []
    for r in range(args.rounds):
        local_s, local_hash = local_round(src, work / f"local-{r}", args)
        ray_s, ray_hash = ray_round(src, work / f"ray-{r}", args, cluster.address)
        assert local_hash == ray_hash, f"round {r}: the datasets differ"
        rounds.append({"local_s": round(local_s, 2), "ray_s": round(ray_s, 2),
                       "local_img_s": round(args.n / local_s, 1), "ray_img_s": round(args.n / ray_s, 1)})
        print(f"round {r}: {rounds[-1]}", flush=True)
    local_med = statistics.median(x["local_img_s"] for x in rounds)
    ray_med = statistics.median(x["ray_img_s"] for x in rounds)
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()]},
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dataset": {"images": args.n, "source": f"{args.source_resolution}x{args.source_resolution} PNG",
                    "output": f"{args.resolution}x{args.resolution} PNG", "same_hash_every_round": True},
        "cluster": {"head_cpus": 0, "worker_nodes": args.cores, "cpus_per_node": 1},
        "local_workers": args.cores, "rounds": rounds,
        "summary": {"local_img_s_median": local_med, "ray_img_s_median": ray_med,
                    "ray_over_local": round(ray_med / local_med, 3)},
    }


if __name__ == "__main__":
    main()
