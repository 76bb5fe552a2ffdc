"""Training throughput per architecture, and what Ray Train costs against a plain loop.

Part 1 (``--part arch``): img/s and sec/kimg of ``GanLoop.train_step`` (data included, real images
from an ingested synthetic dataset) for each architecture, resolution and precision. On CUDA
it runs 64/128/256 at StyleGAN2-ADA-like widths; on CPU it runs small sizes, since that is
what the machine can do, and says so in the JSON.

Part 2 (``--part ray``): the same model, spec and thread count trained for the same steps
(a) in a plain process and (b) in one Ray Train worker (TorchTrainer, 1 worker, the same
``GanLoop.run`` with ``RayReporter``), each timed from inside its own process: the whole
``run`` wall time, the time in training steps, and the time blocked in ``report``. Then
(c) two Ray Train workers with DDP at half the threads each against (a), the configuration
of the first measurement (173 vs 256 img/s), and variants that isolate the costs found.

    .venv/bin/python bench/train_throughput.py --part arch --out bench/results/train_throughput_cpu.json
    .venv/bin/python bench/train_throughput.py --part ray --out bench/results/train_ray_overhead_cpu.json
    .venv/bin/python bench/train_throughput.py --part arch --device cuda --resolutions 64,128,256 \\
        --out bench/results/train_throughput_gpu.json     # where a GPU is lent
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH_MODELS = {
    "dcgan": {"arch": "dcgan", "z_dim": 128},
    "cond-dcgan": {"arch": "cond-dcgan", "z_dim": 128, "embed_dim": 32},
    "stylegan2": {"arch": "stylegan2", "z_dim": 128, "w_dim": 128, "mapping_layers": 2, "conditioning": "tags"},
}
ARCH_TRAIN = {
    "dcgan": {},
    "cond-dcgan": {"dragan_lambda": 0.0},
    "stylegan2": {"lr_g": 0.0025, "lr_d": 0.0025, "beta1": 0.0, "beta2": 0.99, "r1_gamma": 1.0, "r1_interval": 16,
                  "style_mixing": 0.9},
}


def make_dataset(root: Path, n: int, resolution: int) -> str:
    from trainers.data.ingest.local import ingest
    from trainers.data.ingest.synth import write_synthetic_dataset

    dest = root / f"faces{resolution}"
    if not (dest / "ds" / "manifest.json").exists():
        write_synthetic_dataset(dest / "src", n, resolution, seed=0)
        ingest(dest / "src", str(dest / "ds"), dest / "src" / "labels.csv")
    return str(dest / "ds")


def spec_for(url: str, arch: str, channels: int, batch: int, precision: str, steps: int, threads: int,
             workers: int = 1, report_every_s: float = 2.5, every_steps: int = 10 ** 9) -> dict:
    from orchestrator.job.spec_file import parse_spec

    raw = {"name": "bench", "data": {"url": url}, "model": {**ARCH_MODELS[arch], "channels": channels},
           "train": {"steps": steps, "batch_size": batch, "precision": precision, "report_every_s": report_every_s,
                     **ARCH_TRAIN[arch]},
           "scaling": {"workers": workers, "cpus_per_worker": threads},
           "checkpoint": {"every_steps": every_steps}}
    return parse_spec(raw).to_dict()


# -- part 1: per-architecture step throughput ---------------------------------
def time_steps(spec: dict, device: str, warmup: int, steps: int) -> dict:
    import torch

    from trainers.data.stream.shard_stream import batches
    from trainers.grid import from_uint8
    from trainers.loop import GanLoop

    loop = GanLoop(spec, device=torch.device(device))
    stream = batches(loop.stream, loop.local_batch)
    times, data = [], []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        images, samples = next(stream)
        real = from_uint8(images).to(loop.device)
        t1 = time.perf_counter()
        loop.train_step(real, [s["tags"] for s in samples] if loop.tags is not None else None)
        loop.step += 1
        loop.images_seen += loop.batch
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            data.append(t1 - t0)
    loop.stream.close()
    step = statistics.median(times)
    ips = spec["train"]["batch_size"] / step
    return {"img_per_sec": ips, "sec_per_kimg": 1000 / ips, "median_step_s": step,
            "data_frac": sum(data) / sum(times), "steps_timed": steps,
            "params_g": sum(p.numel() for p in loop.g.parameters()),
            "params_d": sum(p.numel() for p in loop.d.parameters())}


def part_arch(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="ganray-tput-"))
    rows = []
    for res in [int(r) for r in args.resolutions.split(",")]:
        url = make_dataset(work, max(args.batch * 4, 256), res)
        for arch in args.archs.split(","):
            for precision in args.precisions.split(","):
                spec = spec_for(url, arch, args.channels, args.batch, precision, 10 ** 9, args.threads)
                r = time_steps(spec, args.device, args.warmup, args.steps)
                row = {"arch": arch, "resolution": res, "precision": precision, "batch": args.batch,
                       "channels": args.channels, **r}
                rows.append(row)
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}),
                      flush=True)
    return {"part": "arch", "device": args.device, "rows": rows}


# -- part 2: Ray Train against a plain loop -----------------------------------
def measured_run(spec: dict, rank: int, world: int, reporter, preemption_checks: bool = False) -> dict:
    """Runs GanLoop.run and returns where the time went (called in either process).

    preemption_checks: as train_worker does under Ray Train (a get_preemption_info collective every
    preemption.check_every_s); off in a plain process, where there is no Ray to ask.
    """
    import torch

    from trainers.loop import GanLoop

    class Timed:
        def __init__(self, inner):
            self.inner, self.seconds, self.calls, self.slowest = inner, 0.0, 0, 0.0

        def report(self, metrics, checkpoint_dir, name):
            t0 = time.perf_counter()
            self.inner.report(metrics, checkpoint_dir, name)
            dt = time.perf_counter() - t0
            self.seconds += dt
            self.calls += 1
            self.slowest = max(self.slowest, dt)

    import resource

    loop = GanLoop(spec, rank, world, torch.device("cpu"))
    loop.preemption.enabled = preemption_checks
    timed = Timed(reporter)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    loop.run(timed)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    steps = loop.step
    loop.stream.close()
    return {"wall_s": wall, "steps": steps, "img_per_sec_wall": steps * loop.batch / wall,
            "step_seconds": loop.train_seconds, "img_per_sec_steps": steps * loop.batch / loop.train_seconds,
            "report_seconds": timed.seconds, "report_calls": timed.calls, "report_slowest_s": timed.slowest,
            "other_seconds": wall - loop.train_seconds - timed.seconds,
            "preempt_checks": loop.preemption.checks, "preempt_check_seconds": loop.preemption.check_seconds,
            "cpu_seconds": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


class NullReporter:
    def report(self, metrics, checkpoint_dir, name):
        pass


PLAIN = """
import json, sys, torch
sys.path.insert(0, {root!r})
from bench.train_throughput import NullReporter, measured_run
torch.set_num_threads({threads})
print("RESULT " + json.dumps(measured_run(json.loads({spec!r}), 0, 1, NullReporter())))
"""


def run_plain(spec: dict, threads: int, env_extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(env_extra or {})
    code = PLAIN.format(root=str(ROOT), threads=threads, spec=json.dumps(spec))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"plain run failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def ray_worker(config: dict) -> None:
    import ray.train
    import torch

    from trainers.ray_worker import RayReporter

    ctx = ray.train.get_context()
    torch.set_num_threads(config["threads"])
    result = measured_run(config["spec"], ctx.get_world_rank(), ctx.get_world_size(), RayReporter(),
                          preemption_checks=config.get("preemption_checks", True))
    if ctx.get_world_rank() == 0:  # Result.metrics is the last checkpoint's; a file is simpler (one machine)
        Path(config["out_path"]).write_text(json.dumps(result))


def ray_process_cpu() -> dict[int, tuple[str, float]]:
    """(name, CPU seconds so far) of every process of this Ray session (raylet, GCS, dashboard, actors)."""
    import psutil
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()  # noqa: SLF001 - a bench may peek
    out = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if session in cmd or "ray::" in cmd:
                t = proc.cpu_times()
                name = cmd.split()[0].rsplit("/", 1)[-1] if not cmd.startswith("ray::") else cmd.split()[0]
                out[proc.pid] = (name[:40], t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def run_ray(spec: dict, workers: int, threads: int, storage: str, preemption_checks: bool = True) -> list[dict]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out_path = Path(storage) / f"result-{time.time_ns()}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        ray_worker, train_loop_config={"spec": spec, "threads": threads, "preemption_checks": preemption_checks,
                                       "out_path": str(out_path)},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name=f"bench-{time.time_ns()}", storage_path=storage))
    before = ray_process_cpu()
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_wall = time.perf_counter() - t0
    after = ray_process_cpu()
    if result.error:
        raise RuntimeError(f"Ray run failed: {result.error}")
    out = json.loads(out_path.read_text())
    # CPU the rest of Ray used during the fit: daemons, the Train controller and helper actors (processes
    # still alive at the end), not rank 0's training worker (nor its decode processes, not Ray's).
    used: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid != out["pid"]:
            used[name] = used.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    top = dict(sorted(((k, round(v, 2)) for k, v in used.items() if v > 0.05), key=lambda kv: -kv[1])[:8])
    out.update(fit_wall_s=fit_wall, ray_other_cpu_seconds=sum(used.values()), ray_other_cpu_top=top)
    return [out]


def part_ray(args) -> dict:
    import ray

    work = Path(args.work or tempfile.mkdtemp(prefix="ganray-rayov-"))
    url = make_dataset(work, 2048, args.ray_resolution)
    cpus = os.cpu_count() or 2
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    t = args.threads
    base = dict(arch="dcgan", channels=args.channels, batch=64, precision="fp32", steps=args.ray_steps,
                every_steps=args.checkpoint_every or 10 ** 9)
    spec1 = spec_for(url, **base, threads=t, workers=1)
    spec2 = spec_for(url, **base, threads=max(t // 2, 1), workers=2)
    storage = str(work / "ray")
    runners = {
        "plain, 1 process": lambda: run_plain(spec1, t),
        "ray train, 1 worker": lambda: run_ray(spec1, 1, t, storage)[0],
        "ray train, 1 worker, no preemption checks": lambda: run_ray(spec1, 1, t, storage, False)[0],
        "ray train, 2 workers DDP": lambda: run_ray(spec2, 2, max(t // 2, 1), storage)[0],
        "plain, 1 process, decode in threads": lambda: run_plain(spec1, t, {"GANRAY_DECODE_WORKERS": "0"}),
    }
    chosen = [c.strip() for c in args.cases.split(";")] if args.cases else list(runners)
    cases = []
    try:
        for rep in range(args.repeats):
            for name in chosen:  # interleaved, so that the machine's other load falls on every case alike
                threads = max(t // 2, 1) if "2 workers" in name else t
                cases.append({"case": name, "threads": threads, "repeat": rep, **runners[name]()})
                c = cases[-1]
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in c.items()}), flush=True)
    finally:
        ray.shutdown()
    summary = {}
    for name in {c["case"] for c in cases}:
        rows = [c for c in cases if c["case"] == name]
        summary[name] = {k: statistics.median(r[k] for r in rows)
                         for k in ("img_per_sec_wall", "img_per_sec_steps", "report_seconds", "other_seconds",
                                   "wall_s", "preempt_check_seconds", "cpu_seconds")}
    plain = summary["plain, 1 process"]["img_per_sec_wall"]  # the reference case always runs
    for name, s in summary.items():
        s["ratio_to_plain"] = s["img_per_sec_wall"] / plain
    return {"part": "ray", "model": base, "resolution": args.ray_resolution, "cases": cases, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["arch", "ray"], required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="dcgan,cond-dcgan,stylegan2")
    ap.add_argument("--resolutions", default="32,64")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--channels", type=int, default=32, help="width at full resolution (64 on a GPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ray-resolution", type=int, default=32)
    ap.add_argument("--ray-steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint-every", type=int, default=0, help="part ray: checkpoint every N steps (0: never)")
    ap.add_argument("--cases", help="part ray: ';'-separated case names to run (default: all)")
    ap.add_argument("--work")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    t0 = time.time()
    result = part_arch(args) if args.part == "arch" else part_ray(args)
    result.update({
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default: spin, then sleep)"),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_avg_at_end": os.getloadavg()},
        "elapsed_s": time.time() - t0,
        "notes": "medians of timed steps/repeats; the 2-core machine is shared with other engineers' tests and "
                 "benchmarks, so absolute numbers carry that contention; ratios are measured in the same run.",
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
