"""Recovery benchmark: what a spot preemption costs, with ganray's agent and without it.

Each repetition builds a local cluster (a head and two one-CPU worker nodes, each a
separate `ray start` process, tests/cluster.py) against a private embedded stack
(MLflow + moto S3), runs a 2-worker DCGAN job, and, once it trains:

- ``notice``: the node's fake metadata server announces a spot stop 20 s ahead;
  `ganray agent` drains the node (deadline 5 s earlier); the workers write a
  just-in-time checkpoint and hold; a replacement node is made ready; at the stop
  time the node is killed.
- ``no_agent``: the same notice, but no agent: what Ray Train alone does (the notice
  is ignored; periodic checkpoints only); the node is killed at the same time.

Measured: notice -> checkpoint committed (s), kill -> first resumed step (s), and
steps lost (steps computed twice, from the workers' sample-key logs).
Ray's timing settings: ``tuned`` (node death seen in ~3 s, drains polled every 1 s)
or ``default``.

    python bench/recovery.py --json bench/results/recovery.json [--reps 3] [--settings tuned,default]
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cluster import LocalCluster  # noqa: E402
from fake_metadata import serve  # noqa: E402

GANRAY = str(Path(sys.executable).parent / "ganray")
NOTICE_S, MARGIN_S, STEPS, EVERY, BATCH = 20.0, 5.0, 600, 100, 16


def sh(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([GANRAY, *args], env=env, capture_output=True, text=True, cwd=ROOT, **kw)
    if out.returncode:
        raise RuntimeError(f"ganray {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out


def sample_log(log_dir: Path) -> dict[int, list[tuple[str, float]]]:
    steps: dict[int, list[tuple[str, float]]] = {}
    for f in log_dir.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            steps.setdefault(e["step"], []).append((f.name, f.stat().st_mtime))
    return steps


def steps_lost(log_dir: Path) -> int:
    """Steps computed by more than one worker group."""
    return sum(1 for es in sample_log(log_dir).values() if len({p for p, _ in es}) > 2)


def one_run(mode: str, settings: str, home: Path, data_url: str, work: Path) -> dict:
    from orchestrator.cluster.endpoints import stack_env
    from orchestrator.stack.local_stack import LocalStack

    stack = LocalStack(home)
    profile = stack.profile()
    env = {**stack_env(home, stack.profile(), stack.credentials(), ray=False), "GANRAY_HOME": str(home),
           "GANRAY_SAMPLE_LOG": str(work / "samples")}
    cluster = LocalCluster(work / "cluster", env, tuned=settings == "tuned")
    server, state = serve()
    agent = None
    try:
        cluster.start_head()
        cluster.add_node("a")
        cluster.add_node("b")
        name = f"rec-{mode}-{settings}-{work.name}"
        spec = work / "job.yaml"
        spec.write_text(yaml.safe_dump({
            "name": name, "data": {"url": data_url}, "model": {"arch": "dcgan", "z_dim": 16, "channels": 16},
            "train": {"steps": STEPS, "batch_size": BATCH, "report_every_s": 1.0},
            "scaling": {"workers": 2}, "checkpoint": {"every_steps": EVERY, "keep": 2},
            "preemption": {"check_every_s": 0.5, "margin_s": 3.0}}))
        cenv = cluster.client_env()
        if mode == "notice":
            agent = subprocess.Popen([GANRAY, "agent", "--provider", "aws", "--metadata-url",
                                      f"http://127.0.0.1:{server.server_address[1]}", "--node-id",
                                      cluster.nodes["a"].node_id, "--margin-s", str(MARGIN_S), "--poll-s", "0.5",
                                      "--address", cluster.address], env=cenv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        job = subprocess.Popen([GANRAY, "run", str(spec), "--quiet"], env=cenv, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and max(sample_log(work / "samples") or [0]) < 30:
            time.sleep(0.3)
        notice_at = time.time()
        state.terminate_at = notice_at + NOTICE_S
        cluster.add_node("c")  # the replacement is ready before the node goes
        time.sleep(max(0.0, state.terminate_at - time.time()))
        cluster.kill_node("a")
        killed_at = time.time()
        out, err = job.communicate(timeout=900)
        if job.returncode:
            raise RuntimeError(f"job failed:\n{err[-3000:]}")
        summary = json.loads(out)
        import mlflow

        mlflow.set_tracking_uri(profile["mlflow_uri"])
        events = json.loads(mlflow.artifacts.load_text(f"runs:/{summary['run_id']}/preemptions.json"))
        ev = events[-1]
        metrics = mlflow.tracking.MlflowClient(profile["mlflow_uri"]).get_run(summary["run_id"]).data.metrics
        result = {"mode": mode, "settings": settings, "steps": summary["steps"],
                  "preempt_check_ms": metrics.get("preempt_check_ms"), "img_per_sec": metrics.get("img_per_sec"),
                  "steps_lost": steps_lost(work / "samples"), "event_kind": ev["kind"],
                  "kill_to_first_step_s": ev["first_step_ts"] - killed_at}
        if mode == "notice":
            result["notice_to_checkpoint_s"] = ev["checkpoint_committed_ts"] - notice_at
        return result
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=10)
        server.shutdown()
        cluster.stop()


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in ("notice_to_checkpoint_s", "kill_to_first_step_s", "steps_lost", "preempt_check_ms"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settings", default="tuned,default", help="comma-separated: tuned, default")
    ap.add_argument("--modes", default="notice,no_agent")
    ap.add_argument("--default-reps", type=int, default=1, help="repetitions with Ray's default settings")
    args = ap.parse_args()

    from orchestrator.stack.local_stack import LocalStack
    from trainers.data.ingest.synth import write_synthetic_dataset

    home = Path(tempfile.mkdtemp(prefix="grb-", dir="/tmp"))
    os.environ["GANRAY_HOME"] = str(home)
    stack = LocalStack(home)
    runs: list[dict] = []
    try:
        stack.up(s3=True)
        creds = stack.credentials()  # MLflow runs with authentication: this process reads runs with its login
        os.environ.update(MLFLOW_TRACKING_USERNAME=creds["mlflow_username"],
                          MLFLOW_TRACKING_PASSWORD=creds["mlflow_password"])
        env = {**os.environ, "GANRAY_HOME": str(home)}
        write_synthetic_dataset(home / "faces", 240, 16, seed=3)
        sh(["data", "ingest", str(home / "faces"), "s3://ganray/data/recovery"], env)
        for settings in args.settings.split(","):
            reps = args.reps if settings == "tuned" else args.default_reps
            for rep in range(reps):
                for mode in args.modes.split(","):
                    work = Path(tempfile.mkdtemp(prefix=f"{mode[:2]}{rep}-", dir=home))
                    r = one_run(mode, settings, home, "s3://ganray/data/recovery", work)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
    finally:
        stack.down()
    groups = {}
    for r in runs:
        groups.setdefault(f"{r['mode']}/{r['settings']}", []).append(r)
    result = {
        "benchmark": "recovery", "machine": f"{platform.machine()} {os.cpu_count()} cores, no GPU (CI-class VM)",
        "setup": {"notice_s": NOTICE_S, "agent_margin_s": MARGIN_S, "steps": STEPS, "checkpoint_every": EVERY,
                  "batch": BATCH, "workers": 2, "nodes": "head (0 CPU) + 2 x 1-CPU worker nodes, replacement ready"},
        "runs": runs, "summary": {k: summarise(v) for k, v in groups.items()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
