"""`ganray local up --s3` (authentication is the default): MLflow behind its basic-auth app, on a stack of
this module's own. A job runs and registers with the stack's login, a wrong password is refused clearly,
and no secret of the stack (S3 keys, Ray token, MLflow login, presigned signatures) is in any file the
stack and the job wrote, in the run's params and tags, the registered model or any process's command line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import ROOT, cli_env

pytestmark = pytest.mark.ray
LOGIN_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
SIGNATURE_MARKS = ("X-Amz-Signature", "X-Amz-Credential")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in cli_env(home).items() if k not in LOGIN_VARS}
    return {**env, **extra}


def cli(home: Path, *args: str, check: bool = True, timeout: float = 600, **extra: str):
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), *args], cwd=ROOT, env=env_for(home, **extra),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ganray {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def secrets_of(home: Path) -> dict[str, str]:
    creds = json.loads((home / "credentials.json").read_text())
    out = {k: creds[k] for k in ("access_key", "secret_key", "mlflow_password", "mlflow_flask_secret")}
    out["ray_token"] = (home / "ray" / "auth_token").read_text().strip()
    return out


def cmdline_hits(needles: list[str]) -> list[str]:
    hits = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            hits += [f"pid {proc.name}: {n[:4]}..." for n in needles if n in cmd]
    return hits


@pytest.fixture(scope="module")
def auth_home():
    home = Path(tempfile.mkdtemp(prefix="gau-", dir="/tmp"))
    try:
        up = cli(home, "local", "up", "--s3", timeout=900)  # no flag: MLflow with authentication
        yield home, up
    finally:
        cli(home, "local", "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_job(auth_home, faces, tmp_path_factory):
    """One job through `ganray run`, with every process's command line scanned while it runs."""
    home, _ = auth_home
    cli(home, "data", "ingest", str(faces), "s3://ganray/data/auth", "--labels", str(faces / "labels.csv"))
    out = tmp_path_factory.mktemp("authjob")
    spec = out / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "authjob", "data": {"url": "s3://ganray/data/auth"}, "model": {"arch": "dcgan", "z_dim": 16,
                                                                               "channels": 8},
        "train": {"steps": 16, "batch_size": 16, "report_every_s": 1.0}, "scaling": {"workers": 2},
        "checkpoint": {"every_steps": 8, "keep": 2}}))
    needles = list(secrets_of(home).values())
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ganray"), "run", str(spec)], cwd=ROOT,
                            env=env_for(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hits: list[str] = []
    try:
        while proc.poll() is None:
            hits += cmdline_hits(needles)
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-4000:]
    return {"summary": json.loads(stdout), "output": stdout + stderr, "cmdline_hits": hits, "dir": out}


def login(home: Path) -> tuple[str, str]:
    creds = json.loads((home / "credentials.json").read_text())
    return creds["mlflow_username"], creds["mlflow_password"]


def client(home: Path, monkeypatch):
    from mlflow.tracking import MlflowClient

    user, password = login(home)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    uri = json.loads((home / "profile.json").read_text())["mlflow_uri"]
    return MlflowClient(uri, registry_uri=uri)


def test_mlflow_asks_for_the_login_that_only_the_private_credentials_hold(auth_home):
    home, up = auth_home
    profile = json.loads((home / "profile.json").read_text())
    user, password = login(home)
    assert profile["mlflow_auth"] is True and oct((home / "credentials.json").stat().st_mode & 0o777) == "0o600"
    current = f"{profile['mlflow_uri']}/api/2.0/mlflow/users/current"
    assert requests.get(current, timeout=30).status_code == 401
    assert requests.get(current, auth=(user, "not-the-password"), timeout=30).status_code == 401
    answer = requests.get(current, auth=(user, password), timeout=30)
    assert answer.status_code == 200 and answer.json()["user"]["is_admin"] is True
    assert password not in up.stdout + up.stderr + (home / "profile.json").read_text() + (home / "stack.json").read_text()
    assert "credentials.json" in up.stdout  # where the login is, said once


def test_a_job_runs_logs_and_registers_with_the_stacks_login(auth_home, auth_job, monkeypatch):
    home, _ = auth_home
    s = auth_job["summary"]
    assert (s["state"], s["steps"], s["version"], s["model_uri"]) == ("finished", 16, 1, "models:/authjob/1")
    c = client(home, monkeypatch)
    steps = [m.value for m in c.get_metric_history(s["run_id"], "step")]
    assert steps and steps[-1] == 16  # the Train controller on the stack's Ray head logged them with the login
    assert {a.path for a in c.list_artifacts(s["run_id"], "samples")} == {"samples/step_000000008.png",
                                                                          "samples/step_000000016.png"}
    assert c.get_model_version("authjob", "1").run_id == s["run_id"]
    status = json.loads(cli(home, "status", "authjob", "--json").stdout)
    assert (status["state"], status["step"]) == ("finished", 16)
    out = auth_job["dir"] / "g.npz"
    cli(home, "generate", s["model_uri"], "--n", "3", "--seed", "1", "--out", str(out))
    import numpy as np

    assert np.load(out)["images"].shape == (3, 16, 16, 3)


def test_a_wrong_password_is_refused_clearly(auth_home):
    home, _ = auth_home
    user, password = login(home)
    wrong = "wrong-" + os.urandom(6).hex()
    for extra in ({"MLFLOW_TRACKING_PASSWORD": wrong}, {"MLFLOW_TRACKING_USERNAME": "mallory"}):
        proc = cli(home, "status", check=False, **extra)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, text
        assert proc.stderr.startswith("ganray: error: MLflow at http://127.0.0.1:") and "refused the credentials" in text
        assert "Traceback" not in text and wrong not in text and password not in text
    bad_run = cli(home, "run", "/nonexistent.yaml", check=False, MLFLOW_TRACKING_PASSWORD=wrong)
    assert bad_run.returncode != 0 and "Traceback" not in bad_run.stderr and wrong not in bad_run.stderr


def _files_under(*roots: Path):
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def test_no_secret_in_any_file_the_stack_and_the_job_wrote(auth_home, auth_job, monkeypatch):
    from orchestrator.stack.local_stack import ray_session_root

    home, up = auth_home
    secrets = secrets_of(home)
    needles = {**{k: v.encode() for k, v in secrets.items()}, **{m: m.encode() for m in SIGNATURE_MARKS}}
    private = {home / "credentials.json", home / "ray" / "auth_token"}  # where they are meant to be
    scanned, found = 0, []
    for path in _files_under(home, Path(ray_session_root(home))):
        if path in private:
            continue
        data = path.read_bytes()
        scanned += 1
        found += [f"{k} in {path}" for k, v in needles.items() if v in data]
    assert scanned > 50 and (home / "logs" / "s3.log").read_text().count("GET /ganray/data/auth/") >= 2
    assert any(p.parent.name == "logs" and "worker" in p.name for p in _files_under(Path(ray_session_root(home))))
    c = client(home, monkeypatch)
    run = c.get_run(auth_job["summary"]["run_id"])
    version = c.get_model_version("authjob", "1")
    texts = {"params/tags": json.dumps([run.data.params, run.data.tags]), "version": json.dumps(version.tags),
             "output": auth_job["output"] + up.stdout + up.stderr}
    found += [f"{k} in {where}" for where, t in texts.items() for k, v in needles.items() if v.decode() in t]
    found += _in_checkpoints(home, needles)
    found += auth_job["cmdline_hits"] + cmdline_hits(list(secrets.values()))
    assert not found, found


def _in_checkpoints(home: Path, needles: dict[str, bytes]) -> list[str]:
    """Every object the job wrote to the stack's S3 server (checkpoints, grids, indexes)."""
    import s3fs

    creds = json.loads((home / "credentials.json").read_text())
    fs = s3fs.S3FileSystem(key=creds["access_key"], secret=creds["secret_key"], client_kwargs={
        "endpoint_url": json.loads((home / "profile.json").read_text())["s3_endpoint"]})
    found, n = [], 0
    for key in fs.find("ganray/checkpoints/authjob"):
        data = fs.cat_file(key)
        n += 1
        found += [f"{k} in s3://{key}" for k, v in needles.items() if v in data]
    assert n >= 4, n
    return found
