"""A conditional model trained through ``ganray run`` on real labelled images nobody here made, judged
by a classifier that shares nothing with ganray.

Data: scikit-learn's ``load_digits`` (1,797 real handwritten digits, 8x8, from the UCI set that
ships inside the scikit-learn wheel; no download), upscaled with PIL bicubic to RGB at
``--resolution`` and tagged "digit 0" ... "digit 9". The bench starts a private embedded stack
(its own GANRAY_HOME), ingests the images, trains the cond-dcgan JobSpec below with ``ganray run``
(Ray Train, MLflow, registry), then ``ganray generate --tags "digit k"`` draws samples of each
class from the registered model.

Judges: (1) independent: a scikit-learn SVC trained on the original 8x8 digits (all of them),
reading each generated image downscaled back to 8x8 greyscale (PIL box filter, 0..16 scale);
(2) ganray's own tag judge (``eval.metrics: [tag_accuracy]``), logged in the MLflow run.

    .venv/bin/python bench/quality_digits.py --out bench/results/quality_digits.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GANRAY = str(Path(sys.executable).parent / "ganray")


def write_digits(dest: Path, resolution: int) -> int:
    """The sklearn digits as RGB PNGs (white ink on black) and labels.csv (file,tags)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "tags"])
        for i, (img, label) in enumerate(zip(digits.images, digits.target)):
            grey = Image.fromarray((img / 16.0 * 255).round().astype(np.uint8), "L")
            grey.resize((resolution, resolution), Image.Resampling.BICUBIC).convert("RGB").save(dest / f"{i:05d}.png")
            w.writerow([f"{i:05d}.png", f"digit {label}"])
    return len(digits.images)


def independent_classifier():
    """An SVC on the original 8x8 digits (scikit-learn's classic example: ~99% held-out accuracy)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    digits = load_digits()
    x = digits.images.reshape(len(digits.images), -1)
    xtr, xte, ytr, yte = train_test_split(x, digits.target, test_size=0.25, random_state=0)
    held_out = float(SVC(gamma=0.001).fit(xtr, ytr).score(xte, yte))
    return SVC(gamma=0.001).fit(x, digits.target), held_out


def to_8x8(images: np.ndarray) -> np.ndarray:
    """uint8 NxHxWx3 -> N x 64 in the digits' 0..16 scale (greyscale, PIL box downscale)."""
    out = []
    for img in images:
        grey = Image.fromarray(img).convert("L").resize((8, 8), Image.Resampling.BOX)
        out.append(np.asarray(grey, dtype=np.float64) / 255.0 * 16.0)
    return np.stack(out).reshape(len(images), -1)


def run(cmd: list[str], env: dict, timeout: float = 3600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], help="spec override a.b=c (repeatable)")
    ap.add_argument("--grid", help="write 10 samples per class as one PNG here")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="grq-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_", "AWS_")) and k != "GANRAY_STORAGE_ROOT"}
    env.update(GANRAY_HOME=str(home), GANRAY_CACHE_DIR=str(home / "cache"))
    work = home / "work"
    try:
        run([GANRAY, "local", "up"], env, 600)
        n = write_digits(work / "digits", args.resolution)
        storage = json.loads((home / "profile.json").read_text())["storage_root"]
        url = f"{storage.rstrip('/')}/data/digits{args.resolution}"
        run([GANRAY, "data", "ingest", str(work / "digits"), url, "--labels", str(work / "digits" / "labels.csv")], env)
        spec = {
            "name": "digits", "data": {"url": url},
            "model": {"arch": "cond-dcgan", "z_dim": 64, "channels": 32, "embed_dim": 16},
            "train": {"steps": args.steps, "batch_size": 64, "lr_g": 0.0005, "lr_d": 0.0005, "loss": "ns",
                      "aux_weight": 5.0, "ema_kimg": 2.0, "seed": 0},
            "scaling": {"workers": args.workers, "cpus_per_worker": 1},
            "checkpoint": {"every_steps": 500, "keep": 2},
            "eval": {"metrics": ["tag_accuracy"], "tag_samples": 1000},
            "registry": {"model_name": "digits"},
        }
        spec_path = work / "digits.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        t0 = time.time()
        summary = json.loads(run([GANRAY, "run", str(spec_path), "--quiet", *sum((["--set", s] for s in args.set),
                                                                                  [])], env, 7200).stdout)
        train_wall = time.time() - t0
        svc, svc_held_out = independent_classifier()
        from sklearn.datasets import load_digits

        real = load_digits()
        per_class, spread, grid = {}, {}, []
        for k in range(10):
            out = work / f"gen{k}.npz"
            run([GANRAY, "generate", summary["model_uri"], "--tags", f"digit {k}", "--n", str(args.per_class),
                 "--seed", str(1000 * k), "--out", str(out)], env)
            images = np.load(out)["images"]
            x = to_8x8(images)
            per_class[str(k)] = float((svc.predict(x) == k).mean())
            # Not one prototype per class: mean distance to the class mean, generated vs real (8x8, 0..16).
            r = real.images[real.target == k].reshape(-1, 64)
            spread[str(k)] = {"generated": float(np.linalg.norm(x - x.mean(0), axis=1).mean()),
                              "real": float(np.linalg.norm(r - r.mean(0), axis=1).mean())}
            grid.append(images[:10])
        if args.grid:
            Image.fromarray(np.concatenate([np.concatenate(list(row), axis=1) for row in grid], axis=0)).save(args.grid)
        from mlflow.tracking import MlflowClient

        uri = json.loads((home / "profile.json").read_text())["mlflow_uri"]
        creds = json.loads((home / "credentials.json").read_text())  # MLflow runs with authentication
        os.environ.update(MLFLOW_TRACKING_USERNAME=creds["mlflow_username"],
                          MLFLOW_TRACKING_PASSWORD=creds["mlflow_password"])
        metrics = MlflowClient(uri).get_run(summary["run_id"]).data.metrics
        result = {
            "bench": "quality_digits",
            "data": {"source": "sklearn.datasets.load_digits (UCI optical digits, shipped in the wheel)",
                     "images": n, "resolution": args.resolution, "upscale": "PIL bicubic from 8x8, greyscale as RGB",
                     "tags": [f"digit {k}" for k in range(10)]},
            "spec": spec, "summary": summary, "train_wall_s": train_wall,
            "independent_judge": {"kind": "sklearn SVC(gamma=0.001) on the original 8x8 digits",
                                  "held_out_accuracy_on_real": svc_held_out,
                                  "reads": "generated image -> greyscale -> PIL box 8x8 -> 0..16 scale"},
            "samples_per_class": args.per_class,
            "accuracy_per_class": per_class, "accuracy": float(np.mean(list(per_class.values()))),
            "spread_per_class": spread,
            "ganray_tag_judge": {k: v for k, v in metrics.items() if k.startswith(("tag_acc", "judge_real"))},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("accuracy", "accuracy_per_class", "train_wall_s")}, indent=2))
    finally:
        subprocess.run([GANRAY, "local", "down"], env=env, cwd=ROOT, capture_output=True, timeout=300)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
