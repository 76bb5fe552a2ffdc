"""End to end through the CLI, on the real embedded stack: Ray (2 Train workers, DDP),
moto's S3 server and an MLflow server. One stack for the module; few Ray fits."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cli_env, ganray, status_elsewhere
from specs import COND_DCGAN, DCGAN, write_spec
from stack_mlflow import mlflow_client

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def s3_dataset(stack, ganray_home, faces):
    """faces ingested through `ganray data ingest` into the stack's S3 server (its URL)."""
    ganray(ganray_home, "data", "ingest", str(faces), "s3://ganray/data/e2e", "--labels", str(faces / "labels.csv"))
    return "s3://ganray/data/e2e"


@pytest.fixture(scope="module")
def demo(s3_dataset, ganray_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    spec = write_spec(out / "job.yaml", "e2e", s3_dataset, model=DCGAN, train={"steps": 24, "batch_size": 16},
                      scaling={"workers": 2}, checkpoint={"every_steps": 8, "keep": 2})
    proc = ganray(ganray_home, "run", str(spec), "--summary-json", str(out / "summary.json"))
    return {"spec": spec, "summary": json.loads(proc.stdout), "file": out / "summary.json", "stderr": proc.stderr}


def test_stack_up_is_idempotent(stack, ganray_home):
    before = {k: v.pid for k, v in stack.services().items()}
    ganray(ganray_home, "local", "up", "--s3")
    status = json.loads(ganray(ganray_home, "local", "status", "--json").stdout)
    assert {k: v["pid"] for k, v in status["services"].items()} == before
    assert all(v["alive"] for v in status["services"].values()) and set(before) == {"ray", "mlflow", "s3"}


def test_job_trains_on_two_workers_checkpoints_to_s3_and_registers(demo, ganray_home, tracking_uri):
    s = demo["summary"]
    assert json.loads(demo["file"].read_text()) == s
    assert isinstance(s["run_id"], str) and s["registered_model"] == "e2e" and s["version"] == 1
    assert s["model_uri"] == "models:/e2e/1" and s["steps"] == 24 and s["images_per_sec"] > 0
    assert s["checkpoint_uri"] == "s3://ganray/checkpoints/e2e/checkpoint_000000024"
    c = mlflow_client(ganray_home)
    run = c.get_run(s["run_id"])
    assert run.data.params["scaling.workers"] == "2" and run.data.metrics["world_size"] == 2
    steps = [m.value for m in c.get_metric_history(s["run_id"], "step")]
    assert steps[-1] == 24 and steps == sorted(steps)
    assert c.get_model_version("e2e", "1").tags["step"] == "24"
    assert {a.path for a in c.list_artifacts(s["run_id"], "samples")} >= {"samples/step_000000024.png"}
    # the checkpoint really is in the S3 server
    from trainers.data.storage import open_filesystem

    fs, path = open_filesystem(s["checkpoint_uri"])
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(path)} >= {"state.pt", "rank_0.pt", "rank_1.pt", "grid.png"}
    status = json.loads(ganray(ganray_home, "status", "e2e", "--json").stdout)
    assert status == {"name": "e2e", "state": "finished", "step": 24, "total_steps": 24,
                      "checkpoint": s["checkpoint_uri"], "run_id": s["run_id"], "preemptions": 0, "failures": 0}
    assert status_elsewhere(tracking_uri, "e2e") == status  # a machine that only shares the tracking server


def test_secrets_stay_out_of_logs_params_and_checkpoints(demo, ganray_home):
    secret = json.loads((ganray_home / "credentials.json").read_text())["secret_key"]
    token = (ganray_home / "ray" / "auth_token").read_text().strip()
    run = mlflow_client(ganray_home).get_run(demo["summary"]["run_id"])
    blob = json.dumps([run.data.params, run.data.tags]) + demo["stderr"]
    from trainers.data.storage import open_filesystem

    fs, path = open_filesystem(demo["summary"]["checkpoint_uri"])
    blob += fs.cat_file(f"{path}/state.pt").decode("latin-1")
    for log in (ganray_home / "logs").glob("*.log"):
        blob += log.read_text(errors="replace")
    assert secret not in blob and token not in blob


def test_finished_job_prints_its_summary_again_without_training(demo, ganray_home):
    again = ganray(ganray_home, "run", str(demo["spec"]))
    assert json.loads(again.stdout) == demo["summary"]
    assert len(mlflow_client(ganray_home).search_model_versions("name='e2e'")) == 1


def test_changed_spec_is_refused_unless_fresh(demo, ganray_home, tracking_uri):
    proc = ganray(ganray_home, "run", str(demo["spec"]), "--set", "train.steps=30", check=False)
    assert proc.returncode == 1
    assert "train.steps: 24 -> 30" in proc.stderr and "--fresh" in proc.stderr
    assert status_elsewhere(tracking_uri, "e2e")["state"] == "finished"  # the refusal changed nothing


def test_generate_from_the_registry(demo, ganray_home, tmp_path):
    uri = demo["summary"]["model_uri"]
    ganray(ganray_home, "generate", uri, "--n", "5", "--seed", "10", "--out", str(tmp_path / "a.npz"))
    ganray(ganray_home, "generate", uri, "--n", "2", "--seed", "12", "--out", str(tmp_path / "b.npz"))
    a, b = np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"]
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[2:4], b)  # sample i comes from seed S + i
    ganray(ganray_home, "generate", uri, "--n", "9", "--out", str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 0
    bad = ganray(ganray_home, "generate", uri, "--out", str(tmp_path / "x.jpg"), check=False)
    assert bad.returncode != 0 and ".jpg" in bad.stderr
    bad = ganray(ganray_home, "generate", uri, "--tags", "hat", "--out", str(tmp_path / "x.png"), check=False)
    assert bad.returncode != 0 and "unconditional" in bad.stderr


CONTINUE_ON_TWO_RANKS = """
import json, os, torch, torch.distributed as dist
from reporters import DirectoryReporter  # tests/ is on PYTHONPATH
from trainers.loop import GanLoop
torch.set_num_threads(1)  # as the Ray Train workers (cpus_per_worker: 1)
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
loop = GanLoop(json.loads(os.environ["SPEC"]), rank, 2)
loop.restore(os.environ["CKPT"])
loop.run(DirectoryReporter(os.environ["OUT"]))
dist.destroy_process_group()
"""


def test_conditional_job_through_ray_resumes_exactly_and_generates_by_tags(s3_dataset, ganray_home, tmp_path):
    """cond-dcgan on 2 Ray Train workers for 8 steps; its step-4 checkpoint, continued in a fresh 2-rank
    process group, reaches the same weights as the uninterrupted run; the registered model samples by tag."""
    import socket

    import torch

    from orchestrator.job.spec_file import load_spec
    from trainers.checkpoints.format import load_state
    from trainers.data.storage import open_filesystem

    spec_path = write_spec(tmp_path / "cond.yaml", "e2e-cond", s3_dataset, model=COND_DCGAN,
                           train={"steps": 8, "batch_size": 16, "dragan_lambda": 1.0, "augment": "diffaug"},
                           scaling={"workers": 2}, checkpoint={"every_steps": 4, "keep": 2},
                           eval={"metrics": ["tag_accuracy"], "tag_samples": 64, "judge_epochs": 2})
    s = json.loads(ganray(ganray_home, "run", str(spec_path)).stdout)
    assert s["state"] == "finished" and s["steps"] == 8 and s["model_uri"] == "models:/e2e-cond/1"

    # Resume equivalence across a restart: step 4 -> 8 in a new process group == the straight run's step 8.
    fs, root = open_filesystem(s["checkpoint_uri"].rsplit("/", 1)[0])
    for step in (4, 8):
        fs.get(f"{root}/checkpoint_{step:09d}", str(tmp_path / f"ray{step}"), recursive=True)
    spec = load_spec(spec_path).to_dict()
    spec["eval"]["metrics"] = []  # evaluation never touches training state; skip it here
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**cli_env(ganray_home), "PYTHONPATH": str(ROOT / "tests"), "SPEC": json.dumps(spec),
           "CKPT": str(tmp_path / "ray4"), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CONTINUE_ON_TWO_RANKS], cwd=ROOT, stderr=subprocess.PIPE,
                              text=True, env={**env, "RANK": str(r), "OUT": str(tmp_path / f"again{r}")})
             for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    straight, resumed = load_state(tmp_path / "ray8"), load_state(tmp_path / "again0" / "checkpoint_000000008")
    assert straight["step"] == resumed["step"] == 8 and straight["world_size"] == 2
    for key in ("g", "d", "g_ema"):
        for name, tensor in straight[key].items():
            if tensor.is_floating_point():
                torch.testing.assert_close(resumed[key][name], tensor, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    assert resumed["stream"] == straight["stream"] and resumed["augment"] == straight["augment"]

    # The registry: tag accuracy measured at the end, the vocabulary in the metadata, sampling by tag.
    c = mlflow_client(ganray_home)
    version = c.get_model_version("e2e-cond", "1")
    assert version.tags["arch"] == "cond-dcgan" and 0 <= float(version.tags["metric.tag_acc"]) <= 1
    assert 0 <= c.get_run(s["run_id"]).data.metrics["tag_acc"] <= 1
    vocabulary = straight["tags"]
    assert "hat" in vocabulary and straight["evaluations"][-1]["step"] == 8
    ganray(ganray_home, "generate", s["model_uri"], "--tags", "hat, Blue Eyes", "--n", "3", "--seed", "5",
           "--out", str(tmp_path / "hat.npz"))
    ganray(ganray_home, "generate", s["model_uri"], "--tags", "glasses", "--n", "3", "--seed", "5",
           "--out", str(tmp_path / "glasses.npz"))
    hat, glasses = np.load(tmp_path / "hat.npz")["images"], np.load(tmp_path / "glasses.npz")["images"]
    assert hat.shape == (3, 16, 16, 3) and not np.array_equal(hat, glasses)  # same seeds, other tags
    bad = ganray(ganray_home, "generate", s["model_uri"], "--tags", "wings", "--out", str(tmp_path / "x.png"),
                 check=False)
    assert bad.returncode == 1 and "unknown tag 'wings'" in bad.stderr and f"known tags: {vocabulary[0]}" in bad.stderr
    # No tags: each sample's tags are drawn from the training data's tag sets (the version carries them).
    ganray(ganray_home, "generate", s["model_uri"], "--n", "3", "--seed", "5", "--out", str(tmp_path / "any.npz"))
    drawn = np.load(tmp_path / "any.npz")["images"]
    assert drawn.shape == (3, 16, 16, 3) and not np.array_equal(drawn, hat)


def _start(spec: Path, ganray_home: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "ganray"), "run", str(spec), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**cli_env(ganray_home), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_training(ganray_home: Path, name: str, above: int = 0, timeout: float = 180) -> None:
    """Until the job's record shows a step past `above` (the record trails the workers by a few seconds)."""
    record, deadline = ganray_home / "jobs" / f"{name}.json", time.time() + timeout
    while time.time() < deadline:
        if record.exists() and json.loads(record.read_text()).get("step", 0) > above:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not report a step past {above} in {timeout} s")


def test_ctrl_c_stopped_aborted_and_fresh_states_agree_everywhere(demo, s3_dataset, ganray_home, tracking_uri,
                                                                  tmp_path):
    # Long enough that Ctrl-C lands mid-run on any machine: the job record trails the workers by up to
    # ~4 s (a report every 2 s, drained by the controller every 2 s) and the stop takes ~1.5 s to reach
    # them; at the fastest speed seen here (~55 steps/s at 16x16, batch 16) that is ~300 steps.
    steps, name = 2000, "resume"
    spec = write_spec(tmp_path / "resume.yaml", name, s3_dataset, model=DCGAN,
                      train={"steps": steps, "batch_size": 16}, scaling={"workers": 2},
                      checkpoint={"every_steps": 8, "keep": 2})
    no_periodic = ("--set", "checkpoint.every_steps=100000")
    c = mlflow_client(ganray_home)
    # 1. Ctrl-C once: a checkpoint, then a clean stop; status 130; stopped everywhere.
    proc = _start(spec, ganray_home, *no_periodic)
    _wait_for_training(ganray_home, name)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    stopped = json.loads(out)
    assert stopped["state"] == "stopped" and 0 < stopped["steps"] < steps and "writing a checkpoint" in err
    seen = status_elsewhere(tracking_uri, name)
    assert (seen["state"], seen["step"], seen["run_id"]) == ("stopped", stopped["steps"], stopped["run_id"])
    assert seen["checkpoint"] == stopped["checkpoint_uri"]
    # 2. The same name resumes from that checkpoint; a second driver of the name is refused; Ctrl-C twice
    #    aborts without a checkpoint, and MLflow and the local record both say interrupted. The sample log
    #    is set for this driver only: it reaches the workers in the job's runtime environment.
    sample_log = tmp_path / "samples"
    proc = _start(spec, ganray_home, *no_periodic, env={"GANRAY_SAMPLE_LOG": str(sample_log)})
    _wait_for_training(ganray_home, name, above=stopped["steps"])
    second = ganray(ganray_home, "run", str(spec), *no_periodic, check=False)
    assert second.returncode == 1 and "already being run by another driver (pid" in second.stderr
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1 and "aborted" in err, err[-3000:]
    assert status_elsewhere(tracking_uri, name)["state"] == "interrupted"
    assert json.loads((ganray_home / "jobs" / f"{name}.json").read_text())["state"] == "interrupted"
    run = c.get_run(stopped["run_id"])
    assert run.data.tags["ganray.state"] == "interrupted" and run.data.metrics["resumed_from_step"] == stopped["steps"]
    images = [m.value for m in c.get_metric_history(stopped["run_id"], "images_seen")]
    assert images == sorted(images) and images[-1] > stopped["steps"] * 16  # resumed, never from zero
    keys = [json.loads(line) for f in sample_log.glob(f"{name}-rank*.jsonl") for line in f.read_text().splitlines()]
    assert {k["rank"] for k in keys} == {0, 1} and min(k["step"] for k in keys) == stopped["steps"] + 1
    # 3. --fresh (a changed spec is allowed with it): a new run from step 0; the old one superseded, and the
    #    checkpoint it recorded deleted.
    done = json.loads(ganray(ganray_home, "run", str(spec), "--fresh", "--set", "train.steps=40").stdout)
    assert done["state"] == "finished" and done["steps"] == 40 and done["run_id"] != stopped["run_id"]
    assert "resumed_from_step" not in c.get_run(done["run_id"]).data.metrics
    assert c.get_run(stopped["run_id"]).data.tags["ganray.state"] == "superseded"
    from trainers.data.storage import open_filesystem

    fs, old = open_filesystem(stopped["checkpoint_uri"])
    assert stopped["steps"] == 40 or not fs.exists(old)
    seen = status_elsewhere(tracking_uri, name)
    assert (seen["state"], seen["step"], seen["run_id"], seen["total_steps"]) == ("finished", 40, done["run_id"], 40)


def test_down_leaves_nothing_and_registered_models_survive(demo, stack, ganray_home, tmp_path):
    pids = [v.pid for v in stack.services().values()]
    ganray(ganray_home, "local", "down")
    from orchestrator.stack.local_stack import ray_temp_dir
    from orchestrator.stack.processes import pid_alive

    assert not any(pid_alive(p) for p in pids)
    marker, home = ray_temp_dir(ganray_home), str(ganray_home)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            assert state == "Z" or (marker not in cmdline and home not in cmdline), cmdline
    ganray(ganray_home, "local", "up", "--s3")
    ganray(ganray_home, "generate", demo["summary"]["model_uri"], "--n", "4", "--out", str(tmp_path / "after.npz"))
    assert np.load(tmp_path / "after.npz")["images"].shape == (4, 16, 16, 3)


def test_a_service_that_fails_to_start_is_reported_with_its_log(tmp_path_factory):
    import tempfile

    import sqlite3

    home = Path(tempfile.mkdtemp(prefix="grf-", dir="/tmp"))
    db = home / "mlflow" / "mlflow.db"
    db.mkdir(parents=True)  # SQLite cannot open a folder: said at once (MLflow itself would retry for ~100 s)
    try:
        proc = ganray(home, "local", "up", check=False, timeout=300)
        assert proc.returncode == 1 and f"its database {db} cannot be opened" in proc.stderr
        db.rmdir()
        with contextlib.closing(sqlite3.connect(db)) as conn:  # a schema from an MLflow this one does not know
            conn.execute("create table alembic_version (version_num varchar(32) not null)")
            conn.execute("insert into alembic_version values ('ffffffffffff')")
            conn.commit()
        proc = ganray(home, "local", "up", check=False, timeout=300)
        assert proc.returncode == 1 and "mlflow exited while starting (exit code 1); last lines of" in proc.stderr
        assert "Can't locate revision identified by 'ffffffffffff'" in proc.stderr
    finally:
        ganray(home, "local", "down", check=False)
        shutil.rmtree(home, ignore_errors=True)
