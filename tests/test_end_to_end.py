"""End to end through the CLI, on the real embedded stack: Ray (2 Train workers, DDP),
moto's S3 server and an MLflow server. One stack for the module; few Ray fits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, cli_env, ganray

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dataset(stack, ganray_home, faces):
    ganray(ganray_home, "data", "ingest", str(faces), "s3://ganray/data/e2e", "--labels", str(faces / "labels.csv"))
    return "s3://ganray/data/e2e"


def write_spec(path: Path, name: str, url: str, **train) -> Path:
    spec = {"name": name, "data": {"url": url}, "model": {"arch": "dcgan", "z_dim": 16, "channels": 8},
            "train": {"steps": 24, "batch_size": 16, **train}, "scaling": {"workers": 2},
            "checkpoint": {"every_steps": 8, "keep": 2}}
    path.write_text(yaml.safe_dump(spec))
    return path


def mlflow_client(home: Path) -> MlflowClient:
    uri = json.loads((home / "profile.json").read_text())["mlflow_uri"]
    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture(scope="module")
def demo(dataset, ganray_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    spec = write_spec(out / "job.yaml", "e2e", dataset)
    proc = ganray(ganray_home, "run", str(spec), "--summary-json", str(out / "summary.json"))
    return {"spec": spec, "summary": json.loads(proc.stdout), "file": out / "summary.json", "stderr": proc.stderr}


def test_stack_up_is_idempotent(stack, ganray_home):
    before = {k: v.pid for k, v in stack.services().items()}
    ganray(ganray_home, "local", "up", "--s3")
    status = json.loads(ganray(ganray_home, "local", "status", "--json").stdout)
    assert {k: v["pid"] for k, v in status["services"].items()} == before
    assert all(v["alive"] for v in status["services"].values()) and set(before) == {"ray", "mlflow", "s3"}


def test_job_trains_on_two_workers_checkpoints_to_s3_and_registers(demo, ganray_home):
    s = demo["summary"]
    assert json.loads(demo["file"].read_text()) == s
    assert isinstance(s["run_id"], str) and s["registered_model"] == "e2e" and s["version"] == 1
    assert s["model_uri"] == "models:/e2e/1" and s["steps"] == 24 and s["images_per_sec"] > 0
    assert s["checkpoint_uri"] == "s3://ganray/checkpoints/e2e/checkpoint_000000024"
    assert "e2e: step" in demo["stderr"] or "step" in demo["stderr"]
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
    assert status["state"] == "finished" and status["step"] == 24


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


def test_changed_spec_is_refused_unless_fresh(demo, ganray_home):
    proc = ganray(ganray_home, "run", str(demo["spec"]), "--set", "train.steps=30", check=False)
    assert proc.returncode == 1
    assert "train.steps: 24 -> 30" in proc.stderr and "--fresh" in proc.stderr


def test_one_driver_per_name(demo, ganray_home):
    from orchestrator.jobs import JobLock

    with JobLock("e2e"):
        proc = ganray(ganray_home, "run", str(demo["spec"]), check=False)
    assert proc.returncode == 1 and "already being run by another driver" in proc.stderr


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


def test_ctrl_c_checkpoints_and_the_same_name_resumes(demo, dataset, ganray_home, tmp_path):
    # Long enough that Ctrl-C lands mid-run: about 20 s of training at the measured speed.
    steps = max(200, int(demo["summary"]["images_per_sec"] / 16 * 20))
    spec = write_spec(tmp_path / "resume.yaml", "resume", dataset, steps=steps)
    cmd = [str(Path(sys.executable).parent / "ganray"), "run", str(spec), "--set", "checkpoint.every_steps=100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(ganray_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    record = ganray_home / "jobs" / "resume.json"
    deadline = time.time() + 180
    while time.time() < deadline:
        if record.exists() and json.loads(record.read_text()).get("step", 0) > 0:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    stopped = json.loads(out)
    assert stopped["state"] == "stopped" and 0 < stopped["steps"] < steps
    assert "writing a checkpoint" in err
    done = json.loads(ganray(ganray_home, "run", str(spec), "--set", "checkpoint.every_steps=100000").stdout)
    assert done["state"] == "finished" and done["steps"] == steps and done["run_id"] == stopped["run_id"]
    c = mlflow_client(ganray_home)
    seen = [m.value for m in c.get_metric_history(done["run_id"], "images_seen")]
    assert seen == sorted(seen) and seen[-1] == steps * 16  # resumed, never restarted from zero


def test_down_leaves_nothing_and_registered_models_survive(demo, stack, ganray_home, tmp_path):
    pids = [v.pid for v in stack.services().values()]
    ganray(ganray_home, "local", "down")
    from orchestrator.stack import pid_alive, ray_temp_dir

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

    home = Path(tempfile.mkdtemp(prefix="grf-", dir="/tmp"))
    (home / "mlflow" / "mlflow.db").mkdir(parents=True)  # SQLite cannot open a folder
    try:
        proc = ganray(home, "local", "up", check=False, timeout=300)
        assert proc.returncode == 1
        assert "mlflow" in proc.stderr and "last lines of" in proc.stderr
    finally:
        ganray(home, "local", "down", check=False)
