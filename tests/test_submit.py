"""Jobs sent to a cluster through Ray's Job API, on the session stack's real Ray head (`ray start --head`,
token auth on): submit, logs, status beside the training state, idempotent resubmits, a refused changed
spec, a checkpointed stop and its resumption, --replace, --now, a second driver refused from another
host, and status/logs/list from a machine that shares nothing but the addresses and the Ray token.

Two jobs in all (a short one and a long one that is stopped, resumed, replaced and stopped again):
four Ray Train fits."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, cli_env, ganray, mlflow_login
from specs import DCGAN, write_spec

pytestmark = pytest.mark.ray

SECRET = "sentinel-secret-3f9a1c77e2"


@pytest.fixture(scope="module")
def cluster(stack, ganray_home, faces):
    """The stack's addresses and token, a dataset, and a Job API client; active test jobs stopped at the end."""
    from ray.job_submission import JobSubmissionClient

    profile = json.loads((ganray_home / "profile.json").read_text())
    token = (ganray_home / "ray" / "auth_token").read_text().strip()
    ganray(ganray_home, "data", "ingest", str(faces), "s3://ganray/data/submit", "--labels", str(faces / "labels.csv"))
    client = JobSubmissionClient(profile["dashboard_url"], headers={"Authorization": f"Bearer {token}"})
    info = {**profile, "token": token, "client": client, "mlflow": MlflowClient(profile["mlflow_uri"]),
            "url": "s3://ganray/data/submit"}
    yield info
    for job in client.list_jobs():
        if (job.metadata or {}).get("ganray.job", "").startswith("sub-") and job.status.value in ("PENDING", "RUNNING"):
            client.stop_job(job.submission_id)
    deadline = time.time() + 120
    while time.time() < deadline and any(j.status.value in ("PENDING", "RUNNING") for j in client.list_jobs()
                                         if (j.metadata or {}).get("ganray.job", "").startswith("sub-")):
        time.sleep(1)


def digest(spec: Path, *overrides: str) -> str:
    from orchestrator.job.spec_file import load_spec

    return load_spec(spec, list(overrides)).digest()


def submit(home: Path, spec: Path, *args: str, env: dict | None = None, check: bool = True):
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), "submit", str(spec), *args], cwd=ROOT,
                          env={**cli_env(home), **(env or {})}, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def last_line(proc) -> str:
    return proc.stdout.strip().splitlines()[-1]


def elsewhere(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI on another machine: an empty GANRAY_HOME, and only the variables in env."""
    home = Path(tempfile.mkdtemp(prefix="gsw-", dir="/tmp"))
    try:
        base = {k: v for k, v in cli_env(home).items() if not k.startswith(("AWS_", "RAY_", "GANRAY_", "MLFLOW_"))}
        return subprocess.run([str(Path(sys.executable).parent / "ganray"), *args], cwd=ROOT,
                              env={**base, "GANRAY_HOME": str(home), **env}, capture_output=True, text=True,
                              timeout=timeout)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def via_dashboard(cluster) -> dict:
    return {"RAY_ADDRESS": cluster["dashboard_url"], "RAY_AUTH_TOKEN": cluster["token"],
            "MLFLOW_TRACKING_URI": cluster["mlflow_uri"], **mlflow_login()}


def via_gcs(cluster) -> dict:
    """What a driver on another host has: the cluster's GCS address, the token, the tracking server."""
    return {"RAY_ADDRESS": cluster["ray_address"], "RAY_AUTH_TOKEN": cluster["token"],
            "MLFLOW_TRACKING_URI": cluster["mlflow_uri"], **mlflow_login()}


def submissions(cluster, name: str) -> list:
    return sorted((j for j in cluster["client"].list_jobs() if (j.metadata or {}).get("ganray.job") == name),
                  key=lambda j: j.start_time)


def ray_status(cluster, sid: str) -> str:
    return str(cluster["client"].get_job_status(sid).value)


def live_run(cluster, name: str):
    experiment = cluster["mlflow"].get_experiment_by_name("ganray")
    if experiment is None:
        return None
    runs = cluster["mlflow"].search_runs([experiment.experiment_id],
                                         filter_string=f"tags.`ganray.job` = '{name}'", max_results=1,
                                         order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def wait_for(what: str, test, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = test()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def training_past(cluster, name: str, step: int, run_id: str | None = None):
    def check():
        run = live_run(cluster, name)
        if run is None or (run_id and run.info.run_id != run_id) or run.data.tags.get("ganray.state") != "running":
            return None
        return run if run.data.metrics.get("step", 0) > step else None
    return wait_for(f"{name} training past step {step}", check)


def test_submit_logs_status_resubmit_and_a_refused_change(cluster, ganray_home, tmp_path):
    spec = write_spec(tmp_path / "a.yaml", "sub-a", cluster["url"], model=DCGAN, train={"steps": 24, "batch_size": 16},
                      scaling={"workers": 2}, checkpoint={"every_steps": 8, "keep": 2})
    sid = f"sub-a-{digest(spec)}"
    password = mlflow_login()["MLFLOW_TRACKING_PASSWORD"]  # the submitter's own login, which must not travel
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": password, "GANRAY_DATA_CACHE_MB": "64",
           "GANRAY_STORAGE_ROOT": "s3://ganray/elsewhere"}
    first = submit(ganray_home, spec, "--working-dir", str(ROOT), env=env)
    assert last_line(first) == sid
    follow = ganray(ganray_home, "logs", "sub-a", "--follow", timeout=600)
    assert '"state": "finished"' in follow.stdout and '"model_uri": "models:/sub-a/1"' in follow.stdout
    status = json.loads(ganray(ganray_home, "status", "sub-a", "--json", "--address", cluster["dashboard_url"]).stdout)
    assert (status["ray_status"], status["state"], status["step"], status["submission_id"]) == \
        ("SUCCEEDED", "finished", 24, sid)
    assert status["checkpoint"] == "s3://ganray/checkpoints/sub-a/checkpoint_000000024"
    assert "ray_status" not in json.loads(ganray(ganray_home, "status", "sub-a", "--json").stdout)  # no cluster
    # Only the worker-side GANRAY_* variables travel; credentials never do (as Ray reports the job).
    info = cluster["client"].get_job_info(sid)
    assert info.runtime_env["env_vars"] == {"GANRAY_DATA_CACHE_MB": "64"}
    shipped = json.dumps(info.runtime_env) + info.entrypoint + json.dumps(info.metadata) + follow.stdout
    stack_secret = json.loads((ganray_home / "credentials.json").read_text())["secret_key"]
    assert all(s not in shipped for s in (SECRET, password, stack_secret, cluster["token"]))
    assert info.entrypoint.endswith("ganray run ganray-submitted-job.yaml")
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")  # the spec and the working tree
    # The same spec again: its id, nothing submitted. A changed spec: refused, nothing submitted.
    assert last_line(submit(ganray_home, spec)) == sid
    changed = submit(ganray_home, spec, "--set", "train.steps=30", check=False)
    assert changed.returncode == 1 and "train.steps: 24 -> 30" in changed.stderr and "--replace" in changed.stderr
    assert [j.submission_id for j in submissions(cluster, "sub-a")] == [sid]
    # Another machine, with the addresses and the token only.
    seen = json.loads(elsewhere("status", "sub-a", "--json", env=via_dashboard(cluster)).stdout)
    assert seen == status
    logs = elsewhere("logs", "sub-a", env=via_dashboard(cluster))
    assert logs.returncode == 0 and '"state": "finished"' in logs.stdout
    listed = json.loads(elsewhere("list", "--json", env=via_dashboard(cluster)).stdout)
    assert {"submission_id": sid, "name": "sub-a", "ray_status": "SUCCEEDED"}.items() <= \
        next(r for r in listed if r["submission_id"] == sid).items()
    no_token = elsewhere("list", env={k: v for k, v in via_dashboard(cluster).items() if k != "RAY_AUTH_TOKEN"})
    assert no_token.returncode == 1 and "RAY_AUTH_TOKEN" in no_token.stderr


def test_stop_resume_replace_and_a_second_driver_refused(cluster, ganray_home, tmp_path):
    spec = write_spec(tmp_path / "b.yaml", "sub-b", cluster["url"], model=DCGAN,
                      train={"steps": 20000, "batch_size": 16}, scaling={"workers": 2},
                      checkpoint={"every_steps": 100000, "keep": 2})
    sid = last_line(submit(ganray_home, spec))
    assert sid == f"sub-b-{digest(spec)}"
    run = training_past(cluster, "sub-b", 0)
    # A second driver of the name, from another host (its own GANRAY_HOME): refused, the holder named.
    second = elsewhere("run", str(spec), env=via_gcs(cluster))
    assert second.returncode == 1 and f"already being run on this cluster by submission {sid}" in second.stderr
    assert last_line(submit(ganray_home, spec)) == sid  # running: its id again
    changed = submit(ganray_home, spec, "--set", "train.steps=30000", check=False)
    assert changed.returncode == 1 and "RUNNING" in changed.stderr and "--replace" in changed.stderr
    # A checkpointed stop: Ray says STOPPED, the run says stopped at the checkpoint it wrote.
    stopped = ganray(ganray_home, "stop", "sub-b", timeout=300)
    assert f"{sid} STOPPED, training stopped at step" in stopped.stdout
    assert ray_status(cluster, sid) == "STOPPED"
    after = cluster["mlflow"].get_run(run.info.run_id)
    step = int(after.data.metrics["step"])
    assert after.data.tags["ganray.state"] == "stopped" and 0 < step < 20000
    assert after.data.tags["ganray.checkpoint_uri"] == f"s3://ganray/checkpoints/sub-b/checkpoint_{step:09d}"
    # Submitted again: the next attempt, resuming from that checkpoint in the same run.
    again = last_line(submit(ganray_home, spec))
    assert again == f"{sid}-2"
    resumed = training_past(cluster, "sub-b", step, run.info.run_id)
    assert resumed.data.metrics["resumed_from_step"] == step
    seen = json.loads(elsewhere("status", "sub-b", "--json", env=via_dashboard(cluster)).stdout)
    assert (seen["ray_status"], seen["state"], seen["submission_id"]) == ("RUNNING", "running", again)
    # --replace: the running attempt stopped with a checkpoint, the new spec a fresh start of the name.
    replaced = submit(ganray_home, spec, "--set", "train.steps=30000", "--replace")
    new = last_line(replaced)
    assert new == f"sub-b-{digest(spec, 'train.steps=30000')}" and ray_status(cluster, again) == "STOPPED"
    fresh = training_past(cluster, "sub-b", 0)
    assert fresh.info.run_id != run.info.run_id and "resumed_from_step" not in fresh.data.metrics
    assert cluster["mlflow"].get_run(run.info.run_id).data.tags["ganray.state"] == "superseded"
    # --now: Ray stops it at once; the driver records an abort, no checkpoint.
    now = ganray(ganray_home, "stop", "sub-b", "--now", timeout=300)
    assert f"{new} STOPPED" in now.stdout and ray_status(cluster, new) == "STOPPED"
    assert cluster["mlflow"].get_run(fresh.info.run_id).data.tags["ganray.state"] == "interrupted"
    assert [j.submission_id for j in submissions(cluster, "sub-b")] == [sid, again, new]


HOLD = """
import sys, time
from orchestrator.job.cluster_lock import held
with held(sys.argv[1], sys.argv[2]) as me:
    print(me["pid"], me["job_id"], flush=True)
    if sys.argv[3] == "hold":
        time.sleep(600)
"""


def test_the_cluster_lock_names_its_holder_and_dies_with_it(cluster, ganray_home, tmp_path):
    """A plain driver (no submission) holds `sub-c`: a submit and a run from other machines are refused
    with it named; killed, it blocks nobody: Ray releases its lock with it."""
    env = {**cli_env(ganray_home), "RAY_ADDRESS": cluster["ray_address"], "RAY_AUTH_TOKEN": cluster["token"]}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "sub-c", cluster["ray_address"], "hold"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pid, job_id = holder.stdout.readline().split()
        spec = write_spec(tmp_path / "c.yaml", "sub-c", cluster["url"], model=DCGAN,
                          train={"steps": 24, "batch_size": 16}, scaling={"workers": 2},
                          checkpoint={"every_steps": 8, "keep": 2})
        refused = elsewhere("submit", str(spec), env=via_dashboard(cluster))
        assert refused.returncode == 1 and f"by a driver (pid {pid} on host" in refused.stderr
        assert f"Ray job {job_id}" in refused.stderr and submissions(cluster, "sub-c") == []
        run = elsewhere("run", str(spec), env=via_gcs(cluster))
        assert run.returncode == 1 and f"by a driver (pid {pid} on host" in run.stderr
        assert live_run(cluster, "sub-c") is None  # refused before the job was opened
    finally:
        holder.kill()
        holder.wait(timeout=30)
    again = subprocess.run([sys.executable, "-c", HOLD, "sub-c", cluster["ray_address"], "once"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=180)
    assert again.returncode == 0 and again.stdout.split()[1] != job_id, again.stderr[-2000:]
