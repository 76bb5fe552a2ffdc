"""Shared fixtures: a private GANRAY_HOME and one real embedded stack per test session.

The stack is real: a local Ray head (token auth on), an MLflow server on SQLite
and moto's S3 server on loopback, started and stopped here by PID.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENDPOINT_VARS = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH",
                 "RAY_AUTH_TOKEN", "GANRAY_STORAGE_ROOT", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_REGISTRY_URI", "RAY_DASHBOARD_ADDRESS")


_SESSION_TMP: dict[str, str] = {}


def pytest_configure(config):
    """One private temp dir for the session, this process and every process it starts (TMPDIR), removed
    at the end: what libraries leave in the temp dir (MLflow's model downloads, say) goes with it."""
    tmp = tempfile.mkdtemp(prefix="grtmp-", dir="/tmp")
    _SESSION_TMP.update(path=tmp, saved=os.environ.get("TMPDIR", ""))
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp


def pytest_unconfigure(config):
    tmp = _SESSION_TMP.get("path")
    if tmp:
        tempfile.tempdir = None
        if _SESSION_TMP["saved"]:
            os.environ["TMPDIR"] = _SESSION_TMP["saved"]
        else:
            os.environ.pop("TMPDIR", None)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def ganray_home():
    """A short, private GANRAY_HOME (Ray's socket paths must stay short)."""
    home = Path(tempfile.mkdtemp(prefix="grt-", dir="/tmp"))
    saved = {k: os.environ.pop(k) for k in ENDPOINT_VARS if k in os.environ}
    os.environ["GANRAY_HOME"] = str(home)
    yield home
    os.environ.pop("GANRAY_HOME", None)
    os.environ.update(saved)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(ganray_home):
    """The embedded stack with its S3 server, up for the whole session."""
    from orchestrator.stack.local_stack import LocalStack

    s = LocalStack(ganray_home)
    try:
        s.up(s3=True)
        yield s
    finally:  # a start that failed halfway leaves services to stop too
        s.down()


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env["GANRAY_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def ganray(home: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the ganray CLI as a user would, against home's stack."""
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), *args], cwd=ROOT, env=cli_env(home),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ganray {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    """A small synthetic tagged dataset (folder of PNGs + labels.csv)."""
    from trainers.data.ingest.synth import write_synthetic_dataset

    d = tmp_path_factory.mktemp("faces")
    write_synthetic_dataset(d, 240, 16, seed=3)
    return d


def ganray_elsewhere(tracking_uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI on "another machine": a fresh, empty GANRAY_HOME that shares only the tracking URI."""
    home = Path(tempfile.mkdtemp(prefix="gre-", dir="/tmp"))
    try:
        env = {k: v for k, v in cli_env(home).items() if not k.startswith(("AWS_", "RAY_", "GANRAY_"))}
        env.update(GANRAY_HOME=str(home), MLFLOW_TRACKING_URI=tracking_uri)
        proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"ganray {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def status_elsewhere(tracking_uri: str, name: str) -> dict:
    """`ganray status NAME --json` as a machine that did not run the job sees it."""
    import json

    return json.loads(ganray_elsewhere(tracking_uri, "status", name, "--json").stdout)


@pytest.fixture(scope="session")
def tracking_uri(stack, ganray_home) -> str:
    import json

    return json.loads((ganray_home / "profile.json").read_text())["mlflow_uri"]
