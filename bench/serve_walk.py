"""POST /walk benchmark: frames per second of a served walk at 64x64, and how smooth it is.

Starts a private embedded stack (stopped by PID at the end, even on failure), registers two untrained
64x64 generators (the weights do not change the cost): a tag-conditional DCGAN shaped as
bench/serve_load.py's (walked in z) and a CPU-sized tag-conditional StyleGAN2 registered through the
registry, so with its W exports (walked in W), and serves each with `ganray serve`'s deployment (one
replica, one CPU). Against each, after one warm-up walk: REPEATS walks of FRAMES frames through 3 key
seeds with two tags, one after the other, as an animated WebP and as a GIF. Reported per model and
format: frames/s end to end (request to the last byte), seconds per walk, bytes; and, for comparison,
``trainers.walks.walk_frames`` in this process on the same version (no HTTP, no encoding); the
smoothness of the walk: the mean pixel change between consecutive frames against the mean change
between its key frames (the issue's "smoother than the keys" ratio; lower is smoother).

    .venv/bin/python bench/serve_walk.py [--frames 48] [--repeats 5] [--json bench/results/serve_walk.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.private_home import private_home  # noqa: E402

RESOLUTION = 64
VOCABULARY = ["blonde hair", "blue eyes", "red hair", "green eyes", "hat", "glasses", "ribbon", "blush"]
MODELS = {"bench-walk-dcgan": {"arch": "cond-dcgan", "z_dim": 64, "channels": 32, "embed_dim": 32},
          "bench-walk-sg2": {"arch": "stylegan2", "z_dim": 64, "w_dim": 64, "channels": 32, "channels_max": 128,
                             "mapping_layers": 4}}
KEYS, TAGS = [3, 11, 20], ["blonde hair", "hat"]


def register(tracking_uri: str, name: str, model: dict) -> int:
    """An untrained generator of that shape as version 1 of name, through the registry (exports included)."""
    import torch
    from mlflow.tracking import MlflowClient

    from orchestrator.registry.versions import register_generator
    from trainers.generator_metadata import GeneratorMetadata
    from trainers.networks import build_models
    from trainers.spec import ModelSpec

    torch.manual_seed(0)
    g, _ = build_models(ModelSpec(**model, conditioning="tags"), RESOLUTION, c_dim=len(VOCABULARY))
    c = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    exp = c.get_experiment_by_name("bench-walk")
    run_id = c.create_run(exp.experiment_id if exp else c.create_experiment("bench-walk")).info.run_id
    version = register_generator(c, run_id, name, g.eval(), GeneratorMetadata(g.config, VOCABULARY, "tags", step=0),
                                 "bench", "untrained")
    c.set_terminated(run_id)
    return version


def smoothness(frames) -> dict:
    """Mean |pixel change| between consecutive frames (the loop closed) and between the key frames."""
    import numpy as np

    f = frames.astype(np.float64)
    steps = np.abs(np.diff(np.concatenate([f, f[:1]]), axis=0)).mean()
    at = [round(i * len(f) / len(KEYS)) for i in range(len(KEYS))]
    keys = statistics.mean(np.abs(f[a] - f[b]).mean() for a, b in zip(at, at[1:] + at[:1]))
    return {"consecutive": round(float(steps), 3), "keys": round(float(keys), 3), "ratio": round(float(steps / keys), 4)}


def served(url: str, frames: int, repeats: int, fmt: str) -> dict:
    """REPEATS walks through POST /walk after one warm-up: frames/s end to end, and the walk's smoothness."""
    import numpy as np
    import requests
    from PIL import Image, ImageSequence

    body = {"seeds": KEYS, "frames": frames, "tags": TAGS}
    requests.post(url + f"walk?format={fmt}", json=body, timeout=600).raise_for_status()
    times, size, answer = [], 0, None
    for _ in range(repeats):
        start = time.perf_counter()
        answer = requests.post(url + f"walk?format={fmt}", json=body, timeout=600)
        times.append(time.perf_counter() - start)
        answer.raise_for_status()
        size = len(answer.content)
    shown = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(io.BytesIO(
        answer.content)))])
    assert len(shown) == frames, (len(shown), frames)
    return {"space": answer.headers["X-Ganray-Walk-Space"], "frames_per_s": round(frames / statistics.median(times), 1),
            "s_per_walk_median": round(statistics.median(times), 3), "s_per_walk": [round(t, 3) for t in times],
            "bytes": size, "smoothness": smoothness(shown)}


def in_process(client, name: str, frames: int, repeats: int) -> dict:
    """trainers.walks.walk_frames on the loaded version in this process: the walk alone."""
    from deploy.loader import load_named
    from trainers.conditioning import TagEncoder
    from trainers.model_ref import ModelRef
    from trainers.walks import walk_frames, walk_space

    model = load_named(client, ModelRef(name, version=1))
    c = TagEncoder(VOCABULARY).encode([TAGS])[0]
    walk_frames(model, KEYS, frames, c, batch=64)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        walk_frames(model, KEYS, frames, c, batch=64)
        times.append(time.perf_counter() - start)
    return {"space": walk_space(model), "frames_per_s": round(frames / statistics.median(times), 1)}


def run(args, home: Path) -> dict:
    from deploy.loader import registry_client
    from deploy.serve_config import ServeConfig, token_digest
    from orchestrator.cluster import serving
    from orchestrator.cluster.endpoints import use_cluster_environment
    from orchestrator.stack.local_stack import LocalStack
    from orchestrator.stack.processes import free_port
    from trainers.model_ref import ModelRef

    stack, results = LocalStack(home), {}
    try:
        stack.up()
        endpoints = use_cluster_environment()
        port, digest = free_port(), token_digest(secrets.token_urlsafe(32))
        for name, model in MODELS.items():
            version = register(endpoints.mlflow_uri, name, model)
            config = ServeConfig(ModelRef(name, version=version), token_sha256=digest)
            url, _, _ = serving.serve(serving.ServeRequest(config, port=port), endpoints)
            try:
                results[name] = {"model": {**model, "resolution": RESOLUTION},
                                 **{fmt: served(url, args.frames, args.repeats, fmt) for fmt in ("webp", "gif")}}
            finally:
                serving.stop(name, endpoints)
            results[name]["walk_frames_in_process"] = in_process(registry_client(endpoints.mlflow_uri), name,
                                                                 args.frames, args.repeats)
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        return results
    finally:
        stack.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "serve_walk.json"))
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with private_home("gsw") as (home, _):
        results = run(args, home)
    report = {"benchmark": "serve_walk", "measured": started,
              "machine": f"{os.cpu_count()}-CPU VM ({platform.processor() or platform.machine()}), no GPU",
              "load_average_end": [round(x, 2) for x in os.getloadavg()], "note": args.note,
              "walk": {"seeds": KEYS, "frames": args.frames, "tags": TAGS, "repeats": args.repeats,
                       "server": "ganray serve: 1 replica, num_cpus 1, rows_per_pass 64, loopback"},
              "weights": "untrained (the cost does not depend on them)", "results": results}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
