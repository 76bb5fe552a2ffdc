"""Projection of held-out real pictures into a trained model, and the same faces redrawn with another hair colour.

    nice -n 19 .venv/bin/python bench/projection.py --out bench/results/projection.json

Everything goes through the product, on an embedded stack of its own (a temporary GANRAY_HOME:
Ray, MLflow, storage in a folder; stopped and removed at the end):

1. data: ``--images`` synthetic tagged faces (``ganray data synth``, seed 0) ingested; held-out
   pictures drawn from the same generator of faces with another seed (never trained on);
2. a tag-conditional StyleGAN2 (``bench/quality.py``'s preset, 32x32) trained ``--steps`` through
   ``ganray run`` and registered (with its W exports and its kept checkpoint: W+ projection with
   D's features);
3. each of ``--pictures`` held-out pictures projected by ``ganray project`` under its own tags
   (``--proj-steps`` steps): the reconstruction's pixel MSE, and a feature distance the projector
   does not optimise (the tag judge's convolutional features), against the nearest (by pixel MSE)
   of ``--random`` random samples of the model with the picture's hair colour (the other tags drawn
   from the training data's tag sets, as ``ganray generate --tags`` draws them); seconds per projection;
4. each latent redrawn by ``ganray generate --latent`` with another hair colour (the next in the
   list): the tag judge (``trainers/metrics/tag_accuracy.py``, trained on ``--judge-images`` other
   real faces) must read the new hair colour, and the redrawn picture must be closer (pixel MSE) to
   the reconstruction than the median distance between random samples with the redraw's tags.

Run it alone (it trains a model on the CPUs), with ``nice -n 19`` on a shared machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.private_home import private_home  # noqa: E402

MODEL = {"arch": "stylegan2", "z_dim": 64, "w_dim": 64, "channels": 32, "channels_max": 128, "mapping_layers": 2,
         "conditioning": "tags"}
TRAIN = {"batch_size": 32, "lr_g": 0.0025, "lr_d": 0.0025, "beta1": 0.0, "beta2": 0.99, "loss": "ns",
         "r1_gamma": 0.01, "r1_interval": 16, "style_mixing": 0.0, "ema": True, "ema_kimg": 2.0}
RESOLUTION = 32
HAIR = ("black hair", "blonde hair", "blue hair", "pink hair", "red hair", "silver hair")


THREADS = {"OMP_NUM_THREADS": "1"}  # the CLI's torch on one thread: on a shared 2-core VM, 2 threads ran 8x slower


def ganray(*args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), *args], capture_output=True, text=True,
                          env={**os.environ, **THREADS})
    if proc.returncode:
        raise RuntimeError(f"ganray {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc.stdout


def labelled(folder: Path) -> list[tuple[Path, list[str]]]:
    rows = list(csv.reader(open(folder / "labels.csv")))[1:]
    return [(folder / r[0], [t.strip() for t in r[1].split(",")]) for r in rows]


def load_images(paths) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def train(work: Path, data: str, steps: int, threads: int) -> dict:
    spec = {"name": "bench-proj", "data": {"url": data}, "model": MODEL, "train": {**TRAIN, "steps": steps},
            "scaling": {"workers": 1, "cpus_per_worker": threads}, "checkpoint": {"every_steps": steps, "keep": 1}}
    (work / "job.yaml").write_text(yaml.safe_dump(spec))
    t0 = time.time()
    summary = json.loads(ganray("run", str(work / "job.yaml"), "--quiet"))
    return {**summary, "wall_s": round(time.time() - t0, 1)}


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel MSE in [-1, 1] units between a (N, R, R, 3) and b (R, R, 3) or (N, R, R, 3)."""
    fa, fb = a.astype(np.float64) / 127.5 - 1, b.astype(np.float64) / 127.5 - 1
    return ((fa - fb) ** 2).reshape(len(fa), -1).mean(axis=1)


def judge_distance(judge, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The feature distance of trainers.projection_features on the tag judge's convolutional features."""
    import torch

    from trainers.grid import from_uint8
    from trainers.projection_features import feature_distance

    def feats(images):
        x, out = from_uint8(np.ascontiguousarray(images)), []
        for layer in judge.body:
            x = layer(x)
            if isinstance(layer, torch.nn.MaxPool2d):
                out.append(x)
        return out

    with torch.no_grad():
        return feature_distance(feats(a), feats(b)).numpy()


def random_samples(model, hair: str, n: int, seed: int) -> np.ndarray:
    from trainers.sampling import condition_rows, sample

    c = condition_rows(model.meta, [hair], n, seed)
    return sample(model.generator, model.meta.z_dim, n, seed, c=c, takes_psi=model.meta.takes_psi)


def exact_samples(model, tags: list[str], n: int, seed: int) -> np.ndarray:
    from trainers.sampling import condition_vector, sample

    return sample(model.generator, model.meta.z_dim, n, seed, c=condition_vector(model.meta, tags),
                  takes_psi=model.meta.takes_psi)


def median_pairwise(images: np.ndarray) -> float:
    flat = images.astype(np.float64).reshape(len(images), -1) / 127.5 - 1
    d = [((flat[i] - flat[j]) ** 2).mean() for i in range(len(flat)) for j in range(i + 1, len(flat))]
    return float(np.median(d))


def project_all(args, work: Path, ref: str, held: list[tuple[Path, list[str]]]) -> list[dict]:
    """`ganray project` and `ganray generate --latent` for each held-out picture, through the CLI."""
    out = []
    for i, (picture, tags) in enumerate(held):
        hair = next(t for t in tags if t in HAIR)
        new_hair = HAIR[(HAIR.index(hair) + 1 + i % (len(HAIR) - 1)) % len(HAIR)]
        new_tags = [new_hair if t == hair else t for t in tags]
        latent = work / f"latent_{i}.npz"
        printed = ganray("project", str(picture), ref, "--tags", ",".join(tags), "--steps", str(args.proj_steps),
                         "--seed", str(i), "--out", str(latent))
        seconds = float(re.search(r"steps, ([0-9.]+) s\)", printed).group(1))
        ganray("generate", ref, "--latent", str(latent), "--tags", ",".join(new_tags), "--out",
               str(work / f"redraw_{i}.png"))
        out.append({"picture": picture.name, "tags": tags, "new_tags": new_tags, "hair": hair, "new_hair": new_hair,
                    "seconds": seconds, "latent": latent, "redraw": work / f"redraw_{i}.png", "printed": printed})
    return out


def measure(args, client, ref: str, done: list[dict], judge, vocabulary: list[str]) -> dict:
    from deploy.loader import load_named
    from trainers.model_ref import parse_ref
    from trainers.metrics.tag_accuracy import predict

    model = load_named(client, parse_ref(ref))
    rows, pools = [], {}
    for i, item in enumerate(done):
        with np.load(item["latent"], allow_pickle=False) as npz:
            rec, space = npz["reconstruction"], str(npz["space"])
        target = load_images([item["path"]])[0]
        if item["hair"] not in pools:
            pools[item["hair"]] = random_samples(model, item["hair"], args.random, 10_000 * (len(pools) + 1))
        pool = pools[item["hair"]]
        pool_mse = mse(pool, target)
        nearest = int(pool_mse.argmin())
        redrawn = load_images([item["redraw"]])[0]
        same_tags = exact_samples(model, item["new_tags"], args.pairwise, 50_000 + i * args.pairwise)
        probs = predict(judge, redrawn[None])[0]
        rows.append({
            "picture": item["picture"], "space": space, "seconds": item["seconds"],
            "pixel_mse": float(mse(rec[None], target)[0]), "nearest_random_mse": float(pool_mse[nearest]),
            "feature": float(judge_distance(judge, rec[None], target[None])[0]),
            "nearest_random_feature": float(judge_distance(judge, pool[nearest:nearest + 1], target[None])[0]),
            "new_hair": item["new_hair"], "judge_reads_new_hair": bool(probs[vocabulary.index(item["new_hair"])] > 0.5),
            "redraw_to_reconstruction_mse": float(mse(redrawn[None], rec)[0]),
            "median_same_tags_mse": median_pairwise(same_tags)})
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    closer = [r["redraw_to_reconstruction_mse"] < r["median_same_tags_mse"] for r in rows]
    return {"pictures": len(rows), "space": sorted({r["space"] for r in rows}),
            "mean_pixel_mse": round(mean("pixel_mse"), 5), "mean_nearest_random_mse": round(mean("nearest_random_mse"), 5),
            "pixel_ratio": round(mean("pixel_mse") / mean("nearest_random_mse"), 4),
            "pictures_at_most_half": sum(r["pixel_mse"] <= 0.5 * r["nearest_random_mse"] for r in rows),
            "mean_feature": round(mean("feature"), 5), "mean_nearest_random_feature": round(mean("nearest_random_feature"), 5),
            "feature_ratio": round(mean("feature") / mean("nearest_random_feature"), 4),
            "seconds_per_projection": round(mean("seconds"), 2),
            "redraw_new_hair_read": round(float(np.mean([r["judge_reads_new_hair"] for r in rows])), 4),
            "redraw_closer_than_median": round(float(np.mean(closer)), 4),
            "redraw_both": round(float(np.mean([c and r["judge_reads_new_hair"] for c, r in zip(closer, rows)])), 4),
            "rows": rows}


def run(args, home: Path, work: Path) -> dict:
    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import use_cluster_environment
    from orchestrator.stack.local_stack import LocalStack
    from trainers.conditioning import TagEncoder
    from trainers.metrics.tag_accuracy import load_or_train_judge

    stack = LocalStack(home)
    try:
        stack.up()
        client = tracking_server.client(use_cluster_environment().mlflow_uri)
        for name, n, seed in (("train-png", args.images, 0), ("held-png", args.pictures, 1),
                              ("judge-png", args.judge_images, 2)):
            ganray("data", "synth", str(work / name), "--n", str(n), "--resolution", str(RESOLUTION), "--seed",
                   str(seed))
        ganray("data", "ingest", str(work / "train-png"), str(work / "train"), "--labels",
               str(work / "train-png" / "labels.csv"))
        job = train(work, str(work / "train"), args.steps, args.threads)
        ref = f"bench-proj/{job['version']}"
        judged = labelled(work / "judge-png")
        vocabulary = sorted({t for _, tags in labelled(work / "train-png") for t in tags})
        judge, judge_scores, _ = load_or_train_judge(
            "bench-projection-judge", lambda: (load_images([p for p, _ in judged]),
                                               TagEncoder(vocabulary).encode([t for _, t in judged]).numpy()),
            vocabulary, epochs=args.judge_epochs)
        held = labelled(work / "held-png")
        t0 = time.time()
        done = project_all(args, work, ref, held)
        for item, (path, _) in zip(done, held):
            item["path"] = path
        projected_s = time.time() - t0
        result = measure(args, client, ref, done, judge, vocabulary)
        return {"job": job, "judge_real_acc": judge_scores.get("judge_real_acc"), "cli_wall_s": round(projected_s, 1),
                **result, "example_output": done[0]["printed"].strip()}
    finally:
        stack.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4000, help="training faces")
    p.add_argument("--steps", type=int, default=800, help="training steps (batch 32)")
    p.add_argument("--threads", type=int, default=1, help="the training worker's CPUs (torch threads)")
    p.add_argument("--pictures", type=int, default=16, help="held-out pictures projected and redrawn")
    p.add_argument("--proj-steps", type=int, default=300)
    p.add_argument("--random", type=int, default=10_000, help="random samples per hair colour for the nearest")
    p.add_argument("--pairwise", type=int, default=64, help="samples with the redraw's tags for the median distance")
    p.add_argument("--judge-images", type=int, default=2000)
    p.add_argument("--judge-epochs", type=int, default=8)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "projection.json"))
    p.add_argument("--note", default="")
    args = p.parse_args()
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    with private_home("gpj") as (home, work):
        out = run(args, home, work)
    report = {"benchmark": "projection", "measured": started, "wall_s": round(time.time() - t0, 1),
              "machine": f"2-core CPU VM ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), no GPU",
              "load_average_end": [round(x, 2) for x in os.getloadavg()], "note": args.note, "cli_env": THREADS,
              "setup": {k: v for k, v in vars(args).items() if k not in ("out", "note")}, "model": MODEL,
              "train": TRAIN, "resolution": RESOLUTION, **out}
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("pixel_ratio", "feature_ratio", "seconds_per_projection",
                                             "redraw_new_hair_read", "redraw_closer_than_median", "redraw_both")}))


if __name__ == "__main__":
    main()
