"""Shared fixtures: a private GANRAY_HOME and one real embedded stack per test session, the session's
small dataset, a private cache per test, and a check that the session wrote nothing into the repository.

The stack is real: a local Ray head (token auth on), an MLflow server on SQLite with authentication
(as a default `ganray local up` starts it) and moto's S3 server on loopback, started and stopped here by
PID. This process holds the stack's MLflow login in its environment, as a user's shell would; the CLI
processes that ``ganray()`` starts take it from the stack themselves.

Test modules import this module as ``conftest`` and the helper modules beside it by their own names
(``reporters``, ``specs``, ``stack_mlflow``, ``cluster``, ...): pytest puts tests/ on sys.path, and
``tests.conftest`` would load this file a second time as another module, with its own session state.
"""
from __future__ import annotations

import os
import shutil
import signal
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
    signal.signal(signal.SIGTERM, _interrupted)


def _interrupted(signum, frame):
    """SIGTERM (a `timeout`, a CI runner giving up, `kill PID`) ends the session as Ctrl-C does: pytest then
    runs every fixture's teardown, so the stack, the chaos clusters and the temp dirs are stopped and removed
    by their owners instead of being left behind with the killed process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise KeyboardInterrupt(f"signal {signum}")


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


LOGIN_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="session")
def stack(ganray_home):
    """The embedded stack with its S3 server, up for the whole session, MLflow with authentication (the
    default); its login in this process's environment, so that a test's own MlflowClient(tracking_uri) works."""
    from orchestrator.stack.local_stack import LocalStack

    s = LocalStack(ganray_home)
    try:
        profile = s.up(s3=True)
        assert profile["mlflow_auth"], "the session's stack runs MLflow without authentication"
        creds = s.credentials()
        os.environ.update(zip(LOGIN_VARS, (creds["mlflow_username"], creds["mlflow_password"])))
        yield s
    finally:  # a start that failed halfway leaves services to stop too
        for name in LOGIN_VARS:
            os.environ.pop(name, None)
        s.down()


def mlflow_login() -> dict[str, str]:
    """The session stack's MLflow login as environment variables ({} before the stack is up): what a
    process that reaches the tracking server from "another machine" needs as well as the URI."""
    return {k: os.environ[k] for k in LOGIN_VARS if k in os.environ}


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


def ganray_here(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The ganray CLI run inside this process (click's runner), against home's stack: the same command
    minus a process start (~6 s of imports each on these machines). For what a command prints and
    refuses; what needs a process of its own (signals, exit codes of a crash, a second driver) keeps
    :func:`ganray`. The environment is put back after (the CLI fills it from the stack)."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    saved = dict(os.environ)
    try:
        result = CliRunner().invoke(main, list(args), env={**{k: None for k in ENDPOINT_VARS},
                                                           "GANRAY_HOME": str(home)})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    proc = subprocess.CompletedProcess(["ganray", *args], result.exit_code, result.stdout, result.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"ganray {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


def cli_refused(proc: subprocess.CompletedProcess, status: int, *words: str) -> str:
    """The one error line of a refused command (its last stderr line, ``ganray: error: ...``, naming every
    one of words, no traceback) after exit status ``status``."""
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-3000:]
    assert err and err[-1].startswith("ganray: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert all(w in err[-1] for w in words), err[-1]
    return err[-1]


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    """A small synthetic tagged dataset (folder of PNGs + labels.csv)."""
    from trainers.data.ingest.synth import write_synthetic_dataset

    d = tmp_path_factory.mktemp("faces")
    write_synthetic_dataset(d, 240, 16, seed=3)
    return d


def _files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def dataset(faces, tmp_path_factory):
    """faces ingested once for the session into a local folder (its URL): 240 tagged 16x16 images in
    shards of 0.02 MB (about 27, so each of two ranks reads many). Tests only read it; the session's end
    checks that none wrote into it. A test that writes beside its data (a text model's caption-embedding
    cache) or needs other shards ingests a dataset of its own."""
    from trainers.data.ingest.local import ingest

    d = tmp_path_factory.mktemp("dataset")
    ingest(faces, str(d), faces / "labels.csv", shard_mb=0.02)
    before = _files_of(d)
    yield str(d)
    changed = sorted(set(before.items()) ^ set(_files_of(d).items()))
    assert not changed, f"a test wrote into the session's dataset {d}: {changed[:5]}; give it a copy of its own"


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """GANRAY_CACHE_DIR in the test's own tmp_path (real-image statistics, tag judges, caption tables) and
    no GANRAY_FID_WEIGHTS: a test depends neither on a developer's cache nor on their weights file."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GANRAY_CACHE_DIR", str(cache))
    monkeypatch.delenv("GANRAY_FID_WEIGHTS", raising=False)
    return cache


def _untracked_at_root() -> set[str] | None:
    """Untracked, not ignored entries at the repository's top level (None outside a git checkout)."""
    if not (ROOT / ".git").exists():
        return None
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--directory", "--no-empty-directory"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines() if line and "/" not in line.rstrip("/")}


@pytest.fixture(scope="session", autouse=True)
def repository_left_clean():
    """Fails the session when it left a new file at the repository's top level: every test and every
    process it starts runs with the repository as its working directory, so an MLflow client without a
    tracking URI writes mlflow.db (or mlruns/) there, as would any other relative path."""
    before = _untracked_at_root()
    yield
    after = _untracked_at_root()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, (f"the test session wrote {new} into the repository {ROOT} (mlflow.db or mlruns/: an MLflow "
                         "client or fluent call without a tracking URI); point it at the session's server or a "
                         "temp dir, and delete the files")


def ganray_elsewhere(tracking_uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI on "another machine": a fresh, empty GANRAY_HOME that shares only the tracking URI (and the
    user's MLflow login)."""
    home = Path(tempfile.mkdtemp(prefix="gre-", dir="/tmp"))
    try:
        env = {k: v for k, v in cli_env(home).items() if not k.startswith(("AWS_", "RAY_", "GANRAY_"))}
        env.update(GANRAY_HOME=str(home), MLFLOW_TRACKING_URI=tracking_uri, **mlflow_login())
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
