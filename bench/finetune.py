"""Fine-tuning a registered model on a small dataset with new tags, against the same job from scratch.

    .venv/bin/python bench/finetune.py --out bench/results/finetune.json

Everything goes through the product, on an embedded stack of its own (a temporary GANRAY_HOME:
Ray, MLflow, storage in a folder; stopped and removed at the end):

1. source data: synthetic faces whose hair is blonde, black, blue or red only (``--source-images``);
2. the source job (the demo's tag-conditional DCGAN, 2 Ray Train workers) trains ``--source-steps``
   and registers ``bench-ft-src`` version 1;
3. target data: ``--per-tag`` faces with pink hair and as many with silver hair, tags the source
   never saw (the other tags drawn as usual);
4. jobs on the target data with the same spec, steps and seed: one with
   ``model.init_from: bench-ft-src/1`` (its first report counts the tag rows copied, new and
   dropped), one from scratch, and the fine-tune again with DiffAugment and ADA (p from 0, target
   0.6: how far p goes on a small dataset); each registers its generator;
5. both registered versions are loaded through the registry and asked for the target's own tag
   sets; the project's tag judge (``trainers/metrics/tag_accuracy.py``), trained on
   ``--judge-images`` held-out target-domain faces, scores the new tags (pink hair, silver hair)
   and every requested tag.

Run it alone: two CPU-heavy jobs at once on 2 cores ruin both.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.private_home import private_home  # noqa: E402

SOURCE_HAIR = ("blonde hair", "black hair", "blue hair", "red hair")
NEW_HAIR = ("pink hair", "silver hair")
MODEL = {"arch": "cond-dcgan", "z_dim": 64, "channels": 32, "embed_dim": 32}
TRAIN = {"batch_size": 64, "lr_g": 0.0005, "lr_d": 0.0005, "loss": "ns", "aux_weight": 5.0, "ema_kimg": 2.0}
ADA = {"augment": "diffaug", "ada_target": 0.6, "augment_p": 0.0}  # the third job: the fine-tune with ADA from p=0


def draw_faces(dest: Path, n: int, hair: tuple[str, ...], seed: int, resolution: int = 32) -> Path:
    """n synthetic faces (PNG + labels.csv) with their hair drawn from hair, the other tags as usual."""
    from trainers.data.ingest.synth import Face, render_face, sample_face

    dest.mkdir(parents=True)
    with (dest / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "tags"])
        for i in range(n):
            rng = random.Random(f"{seed}:{i}")
            face = sample_face(rng)
            face = Face(hair[i % len(hair)], face.eyes, face.background, face.accessories)
            render_face(face, resolution, rng).save(dest / f"{i:06d}.png")
            writer.writerow([f"{i:06d}.png", ", ".join(face.tags)])
    return dest


def ganray(*args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ganray {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc.stdout


def run_job(work: Path, name: str, data: str, steps: int, seed: int, model_extra: dict, workers: int,
            train_extra: dict | None = None) -> dict:
    spec = {"name": name, "data": {"url": data}, "model": {**MODEL, **model_extra},
            "train": {**TRAIN, "steps": steps, "seed": seed, **(train_extra or {})},
            "scaling": {"workers": workers, "cpus_per_worker": 1},
            "checkpoint": {"every_steps": steps, "keep": 1}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.time()
    summary = json.loads(ganray("run", str(path), "--quiet"))
    return {**summary, "wall_s": round(time.time() - t0, 1)}


def judge_versions(client, refs: dict[str, str], target: Path, judge_dir: Path, samples: int, epochs: int) -> dict:
    """Tag accuracy of each registered version on the target's own tag sets, by the judge trained on judge_dir."""
    from PIL import Image

    from deploy.loader import load_named
    from trainers.conditioning import TagEncoder
    from trainers.metrics.tag_accuracy import load_or_train_judge, predict, score
    from trainers.model_ref import parse_ref
    from trainers.sampling import sample

    def rows(folder: Path) -> list[tuple[str, list[str]]]:
        return [(r[0], [t.strip() for t in r[1].split(",")]) for r in list(csv.reader(open(folder / "labels.csv")))[1:]]

    judged = rows(judge_dir)
    vocabulary = sorted({t for _, tags in rows(target) for t in tags})
    enc = TagEncoder(vocabulary)
    judge, judge_scores, _ = load_or_train_judge(
        "bench-finetune-judge", lambda: (np.stack([np.asarray(Image.open(judge_dir / f).convert("RGB"))
                                                   for f, _ in judged]), enc.encode([t for _, t in judged]).numpy()),
        vocabulary, epochs=epochs)
    wanted = [tags for _, tags in rows(target)]
    wanted = [wanted[i % len(wanted)] for i in range(samples)]
    out = {"judge_real_acc": judge_scores.get("judge_real_acc")}
    for label, ref in refs.items():
        loaded = load_named(client, parse_ref(ref))
        c = TagEncoder(loaded.meta.vocabulary).encode(wanted)
        images = sample(loaded.generator, loaded.meta.z_dim, samples, seed=12345, c=c)
        result = score(predict(judge, images), enc.encode(wanted).numpy(), vocabulary)
        new = [result[f"tag_acc.{t.replace(' ', '_')}"] for t in NEW_HAIR]
        out[label] = {"version": ref, "tag_acc_new_tags": round(float(np.mean(new)), 4),
                      **{f"tag_acc.{t}": round(v, 4) for t, v in zip(NEW_HAIR, new)},
                      "tag_acc_all_requested": round(result["tag_acc"], 4)}
    return out


def run(args, home: Path, work: Path) -> dict:
    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import use_cluster_environment
    from orchestrator.stack.local_stack import LocalStack

    stack = LocalStack(home)
    try:
        stack.up()
        client = tracking_server.client(use_cluster_environment().mlflow_uri)
        datasets = {}
        for name, n, hair, seed in (("source", args.source_images, SOURCE_HAIR, 0),
                                    ("target", args.per_tag * len(NEW_HAIR), NEW_HAIR, 1)):
            folder = draw_faces(work / f"{name}-png", n, hair, seed)
            ganray("data", "ingest", str(folder), str(work / name), "--labels", str(folder / "labels.csv"))
            datasets[name] = (folder, str(work / name))
        judge_dir = draw_faces(work / "judge-png", args.judge_images, NEW_HAIR, 2)
        jobs = {"source": run_job(work, "bench-ft-src", datasets["source"][1], args.source_steps, 0, {}, args.workers)}
        ref = f"bench-ft-src/{jobs['source']['version']}"
        jobs["fine_tune"] = run_job(work, "bench-ft-tune", datasets["target"][1], args.steps, 1, {"init_from": ref},
                                    args.workers)
        jobs["scratch"] = run_job(work, "bench-ft-scratch", datasets["target"][1], args.steps, 1, {}, args.workers)
        jobs["fine_tune_ada"] = run_job(work, "bench-ft-ada", datasets["target"][1], args.steps, 1, {"init_from": ref},
                                        args.workers, ADA)
        run_metrics = client.get_run(jobs["fine_tune"]["run_id"]).data.metrics
        carried = {k: int(run_metrics[k]) for k in ("init_tags_copied", "init_tags_new", "init_tags_dropped")}
        p = [m.value for m in client.get_metric_history(jobs["fine_tune_ada"]["run_id"], "augment_p")]
        names = {"fine_tune": "bench-ft-tune", "scratch": "bench-ft-scratch", "fine_tune_ada": "bench-ft-ada"}
        scores = judge_versions(client, {k: f"{names[k]}/{jobs[k]['version']}" for k in names},
                                datasets["target"][0], judge_dir, args.samples, args.judge_epochs)
        return {"jobs": jobs, "carried": carried, "scores": scores,
                "ada": {**ADA, "augment_p_max": round(max(p), 4) if p else None,
                        "augment_p_last": round(p[-1], 4) if p else None}}
    finally:
        stack.down()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source-images", type=int, default=2000)
    p.add_argument("--source-steps", type=int, default=300)
    p.add_argument("--per-tag", type=int, default=50, help="target images per new tag (the bar: at most 50)")
    p.add_argument("--steps", type=int, default=100, help="steps of the fine-tune and of the scratch job")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--judge-images", type=int, default=2000)
    p.add_argument("--judge-epochs", type=int, default=8)
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune.json"))
    p.add_argument("--note", default="")
    args = p.parse_args()
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    with private_home("gft") as (home, work):
        out = run(args, home, work)
    s = out["scores"]
    report = {"benchmark": "finetune", "measured": started, "wall_s": round(time.time() - t0, 1),
              "machine": f"2-core CPU VM ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), no GPU",
              "load_average_end": [round(x, 2) for x in os.getloadavg()], "note": args.note,
              "setup": {k: v for k, v in vars(args).items() if k not in ("out", "note")},
              "model": MODEL, "train": TRAIN, "source_hair": SOURCE_HAIR, "new_tags": NEW_HAIR, **out,
              "advantage_new_tags": round(s["fine_tune"]["tag_acc_new_tags"] - s["scratch"]["tag_acc_new_tags"], 4),
              "advantage_all_requested": round(s["fine_tune"]["tag_acc_all_requested"]
                                               - s["scratch"]["tag_acc_all_requested"], 4)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("advantage_new_tags", "advantage_all_requested", "carried")}))


if __name__ == "__main__":
    main()
