"""Latent walks at 64x64: frames per second of ``ganray generate --walk`` and how smooth the walks are.

    nice -n 19 .venv/bin/python bench/walks.py --out bench/results/walks.json

On an embedded stack of its own (a temporary GANRAY_HOME, stopped and removed at the end), freshly
initialised (untrained) 64x64 generators are registered the registry's way (``register_generator``:
pt2, and for the StyleGAN2 its exported mapping, synthesis and noise maps): a StyleGAN2 (walks in W)
and a DCGAN (walks in z). Untrained networks cost what trained ones of the same size cost; their
smoothness numbers say how the interpolation behaves on these networks, not on a trained model's faces.

For each model:

- the CLI: ``ganray generate MODEL --walk 1,2,3,4 --frames F --out walk.gif`` (and ``.webp``) timed as a
  user runs it (process start, imports, download and checks of the version, the walk, the file);
- the walk core through the one loader (``deploy.loader.load_named``, then ``trainers.walks.walk_frames``
  after a warm-up): frames per second of drawing alone; the StyleGAN2 also walked in z (its parts
  left out, as a version registered before them walks);
- smoothness: the mean absolute pixel change (0-255) between consecutive frames of the loop, against the
  mean change between consecutive key seeds' samples (the frames the walk passes through); their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.private_home import private_home  # noqa: E402

SEEDS = [1, 2, 3, 4]
MODELS = {
    "stylegan2": {"arch": "stylegan2", "z_dim": 128, "channels": 32, "channels_max": 256, "mapping_layers": 8},
    "dcgan": {"arch": "dcgan", "z_dim": 128, "channels": 64, "channels_max": 512},
}


def register(client, name: str, model: dict, resolution: int) -> int:
    """A freshly initialised generator of the model section registered as version 1 of name."""
    import torch

    from orchestrator.registry.versions import register_generator
    from trainers.generator_metadata import GeneratorMetadata
    from trainers.networks import build_models
    from trainers.spec import ModelSpec

    torch.manual_seed(0)
    g, _ = build_models(ModelSpec(**model), resolution)
    g.eval()
    if model["arch"] == "stylegan2":  # an average w of its own, as training tracks it
        g.mapping(torch.randn(512, model["z_dim"]), None, update_w_avg=True)
    exp = client.get_experiment_by_name("bench-walks") or client.get_experiment(client.create_experiment("bench-walks"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    version = register_generator(client, run_id, name, g, GeneratorMetadata(g.config, [], "none", step=0),
                                 "bench", "untrained")
    client.set_terminated(run_id)
    return version


def cli_walk(ref: str, frames: int, out: Path) -> float:
    """Seconds of one ``ganray generate --walk`` as a user runs it."""
    started = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), "generate", ref, "--walk",
                           ",".join(map(str, SEEDS)), "--frames", str(frames), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ganray generate --walk exited {proc.returncode}: {proc.stderr[-3000:]}")
    return time.perf_counter() - started


def _change(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames of a loop (the last back to the first)."""
    loop = np.concatenate([frames, frames[:1]]).astype(np.float64)
    return float(np.abs(np.diff(loop, axis=0)).mean())


def core_walk(model, frames: int, rounds: int) -> dict:
    """Frames per second of walk_frames (median of rounds, after a warm-up) and the walk's smoothness."""
    from trainers.sampling import sample
    from trainers.walks import walk_frames, walk_space

    walk_frames(model, SEEDS, 8)  # warm-up
    times, drawn = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        drawn = walk_frames(model, SEEDS, frames)
        times.append(time.perf_counter() - started)
    keys = np.concatenate([sample(model.generator, model.meta.z_dim, 1, s, takes_psi=model.meta.takes_psi)
                           for s in SEEDS])
    consecutive, between_keys = _change(drawn), _change(keys)
    return {"space": walk_space(model), "frames": frames, "seconds": [round(t, 3) for t in times],
            "frames_per_s": round(frames / float(np.median(times)), 1),
            "mean_change_consecutive": round(consecutive, 3), "mean_change_between_keys": round(between_keys, 3),
            "smoothness_ratio": round(consecutive / between_keys, 4)}


def run(args, home: Path, work: Path) -> dict:
    from deploy.loader import load_named
    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import use_cluster_environment
    from orchestrator.stack.local_stack import LocalStack
    from trainers.model_ref import ModelRef

    stack = LocalStack(home)
    try:
        stack.up()
        client = tracking_server.client(use_cluster_environment().mlflow_uri)
        results = {}
        for key, model in MODELS.items():
            name = f"bench-walk-{key}"
            version = register(client, name, model, args.resolution)
            loaded = load_named(client, ModelRef(name, version=version))
            row = {"model": model, "core": core_walk(loaded, args.frames, args.rounds)}
            if loaded.mapping is not None:  # the same version walked in z, as one registered before its parts
                row["core_in_z"] = core_walk(replace(loaded, mapping=None, synthesis=None, noise=()), args.frames,
                                             args.rounds)
            for suffix in ("gif", "webp"):
                seconds = cli_walk(f"{name}/{version}", args.frames, work / f"{key}.{suffix}")
                row[f"cli_{suffix}"] = {"seconds": round(seconds, 2), "frames_per_s": round(args.frames / seconds, 1),
                                        "bytes": (work / f"{key}.{suffix}").stat().st_size}
            results[key] = row
        return results
    finally:
        stack.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "walks.json"))
    p.add_argument("--note", default="")
    args = p.parse_args()
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    load_start = [round(x, 2) for x in os.getloadavg()]
    with private_home("gwk") as (home, work):
        results = run(args, home, work)
    report = {"benchmark": "walks", "measured": started, "wall_s": round(time.time() - t0, 1),
              "machine": f"CPU VM ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), no GPU",
              "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "note": args.note, "seeds": SEEDS, "resolution": args.resolution, "untrained": True,
              "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: {"core_fps": v["core"]["frames_per_s"], "cli_gif_fps": v["cli_gif"]["frames_per_s"],
                          "smoothness_ratio": v["core"]["smoothness_ratio"]} for k, v in results.items()}))


if __name__ == "__main__":
    main()
