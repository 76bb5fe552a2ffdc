"""The local stack on a shared machine, tried as another local user would: MLflow of a default `local up`
refuses anonymous requests (and the stack's own user still works); a stack already running without
authentication keeps running, is told how to switch, and switches after `down`, `up`; the S3 server's
trust in every local user is said, and true; `local down` stops exactly the processes the stack
started (a `tail -f` of a Ray log, a process naming the temp dir, and a process of another user
survive; Ray's workers and what they started, in groups and sessions of their own, do not)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest
import requests

from conftest import cli_env, ganray

NOBODY = 65534
SEARCHES = ("/api/2.0/mlflow/registered-models/search", "/api/2.0/mlflow/experiments/search")


def _alive(pid: int) -> bool:
    from orchestrator.stack.processes import pid_alive

    return pid_alive(pid)


def _wait_dead(pids, timeout: float = 20.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.3)
    return [p for p in pids if _alive(p)]


def _end(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def _anonymous(uri: str, auth: tuple[str, str] | None = None) -> list[int]:
    return [requests.get(f"{uri}{path}", params={"max_results": 10}, auth=auth, timeout=30).status_code
            for path in SEARCHES]


def _group(pgid: int) -> set[int]:
    """The live members of process group pgid, as /proc has them."""
    members = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split() if entry.name.isdigit() else []
        except OSError:
            continue
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.add(int(entry.name))
    return members


# -- which processes are ours: a fake /proc -------------------------------------------------------

BTIME, TICKS = 1_000_000, os.sysconf("SC_CLK_TCK")


def fake_process(proc: Path, pid: int, *, uid: int, ppid: int = 1, started: float = BTIME + 500,
                 environ: list[str] | None = None, state: str = "S") -> None:
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    ticks = int((started - BTIME) * TICKS)
    rest = " ".join(["0"] * 15)  # tty_nr .. itrealvalue
    (entry / "stat").write_text(f"{pid} (x) y) {state} {ppid} {pid} {pid} {rest} {ticks} 0 0\n")
    (entry / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    if environ is not None:
        (entry / "environ").write_bytes(b"\0".join(v.encode() for v in environ) + b"\0")


def test_only_processes_of_ours_with_the_services_marker_are_selected(tmp_path):
    from orchestrator.stack.processes import Owner, descendants, select_strays

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(f"cpu 1 2 3\nbtime {BTIME}\n")
    me, mark = os.getuid(), "ganray_stack_run=3f2a"
    fake_process(proc, 101, uid=me, environ=["A=1", mark])  # a worker of ours
    fake_process(proc, 102, uid=NOBODY, environ=[mark])  # another user's, with the same marker
    fake_process(proc, 103, uid=me, environ=["GANRAY_HOME=/h", "RAY_AUTH_TOKEN_PATH=/h/ray/auth_token"])  # a tail -f
    fake_process(proc, 104, uid=me, started=BTIME + 100, environ=[mark])  # a reused PID: older than the service
    fake_process(proc, 105, uid=me, environ=[mark], state="Z")
    fake_process(proc, 106, uid=me)  # environment unreadable
    fake_process(proc, 107, uid=me, environ=[mark + "0"])  # a marker of another start
    fake_process(proc, 201, uid=me, ppid=101, environ=[mark])
    fake_process(proc, 301, uid=me, ppid=201, environ=[mark])
    owner = Owner(mark, since=BTIME + 400)
    assert select_strays(range(100, 400), owner, proc) == [101, 201, 301]
    assert descendants({101}, proc) == {201, 301} and descendants({102}, proc) == set()


def test_ray_records_its_workers_and_drivers_pids_in_its_log_file_names(tmp_path):
    from orchestrator.stack.processes import ray_recorded_pids

    logs = tmp_path / "session_2026-01-01_00-00-00_1_2" / "logs"
    logs.mkdir(parents=True)
    for name in ("worker-85be41-ffffffff-23355.out", "worker-85be41-01000000-23356.err", "raylet.out",
                 "python-core-worker-dcdbad_23357.log", "python-core-driver-01000000ff_23358.log",
                 "gcs_server.out", "worker-xyz-1-99.out", "job-driver-sub-1.log"):
        (logs / name).write_text("")
    assert ray_recorded_pids(tmp_path) == {23355, 23356, 23357, 23358}


def test_down_leaves_another_users_process_and_our_own_others_alone(tmp_path, monkeypatch):
    """A stale stack.json whose PIDs now belong to another user's process and to a process of ours that the
    stack did not start, both naming the Ray temp dir, and Ray's records naming them: nothing is signalled,
    nothing raises (also where the kernel refuses a signal, as it does for a user who is not root)."""
    from orchestrator.stack.local_stack import LocalStack, ray_session_root, ray_temp_dir

    home = tmp_path / "home"
    home.mkdir()
    root = ray_session_root(home)
    theirs = subprocess.Popen(["sh", "-c", "sleep 600; :", "sh", root], user=NOBODY, group=NOBODY,
                              start_new_session=True)
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", root], start_new_session=True)
    try:
        logs = Path(root) / "session_2026-01-01_00-00-00_1_2" / "logs"
        logs.mkdir(parents=True)
        (logs / f"worker-85be41-ffffffff-{theirs.pid}.out").write_text("")
        (logs / f"python-core-worker-dcdbad_{mine.pid}.log").write_text("")
        record = {"ray": {"name": "ray", "pid": theirs.pid, "port": 1, "log": str(home / "ray.log"),
                          "started": time.time() - 60, "marker": "ganray_stack_run=00ff"},
                  "mlflow": {"name": "mlflow", "pid": mine.pid, "port": 2, "log": str(home / "mlflow.log"),
                             "started": time.time() - 60, "marker": "ganray_stack_run=11ee"}}
        (home / "stack.json").write_text(json.dumps({"services": record}))
        assert LocalStack(home).down(timeout=2) == []
        time.sleep(0.5)
        assert theirs.poll() is None, "another user's process was signalled"
        assert mine.poll() is None, "a process of ours that the stack did not start was signalled"

        signals = []

        def refused(pid, sig):
            signals.append((pid, sig))
            if sig:
                raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "kill", refused)
        monkeypatch.setattr(os, "killpg", refused)
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"worker-85be41-ffffffff-{theirs.pid}.out").write_text("")
        (home / "stack.json").write_text(json.dumps({"services": {"ray": record["ray"]}}))
        LocalStack(home).down(timeout=2)  # never raises
        assert not [s for s in signals if s[1]], signals
        monkeypatch.undo()
        assert theirs.poll() is None and mine.poll() is None
    finally:
        _end(theirs, mine)
        shutil.rmtree(ray_temp_dir(home), ignore_errors=True)


# -- MLflow of a default `local up`, on the session's stack ---------------------------------------

def test_mlflow_of_a_default_local_up_refuses_anonymous_requests(stack, ganray_home, tracking_uri):
    up = ganray(ganray_home, "local", "up", "--s3")  # the session's stack: `local up` without flags
    assert "MLflow asks for a login" in up.stdout and "credentials.json" in up.stdout
    assert _anonymous(tracking_uri) == [401, 401]
    creds = json.loads((ganray_home / "credentials.json").read_text())
    login = (creds["mlflow_username"], creds["mlflow_password"])
    assert _anonymous(tracking_uri, (login[0], "not-it")) == [401, 401]
    assert _anonymous(tracking_uri, login) == [200, 200]
    # The stack's user: a ganray command with no login in its environment, and this process's own client.
    listed = ganray(ganray_home, "models", "list", "--json")
    assert isinstance(json.loads(listed.stdout), list)
    assert ganray(ganray_home, "status", "--json").returncode == 0
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri).search_experiments(max_results=1) is not None
    # Once on, it stays on: --no-auth is refused with a warning, and MLflow keeps asking.
    again = ganray(ganray_home, "local", "up", "--s3", "--no-auth")
    assert "ganray: warning: --no-auth ignored" in again.stderr and _anonymous(tracking_uri) == [401, 401]
    assert creds["mlflow_password"] not in up.stdout + up.stderr + again.stdout + again.stderr


def test_local_up_says_plainly_that_the_s3_server_trusts_every_local_user(stack, ganray_home):
    up = ganray(ganray_home, "local", "up", "--s3")
    profile = json.loads((ganray_home / "profile.json").read_text())
    assert (f"ganray: warning: the local S3 server ({profile['s3_endpoint']}) checks no signatures: any user of "
            "this machine can read, write and delete its objects") in up.stderr
    # ... and it is so: keys that are not the stack's write and read its bucket.
    s3 = boto3.client("s3", endpoint_url=profile["s3_endpoint"], region_name="us-east-1",
                      aws_access_key_id="not-the-stacks", aws_secret_access_key="wrong")
    s3.put_object(Bucket="ganray", Key="hostile/planted.txt", Body=b"anyone")
    assert s3.get_object(Bucket="ganray", Key="hostile/planted.txt")["Body"].read() == b"anyone"
    s3.delete_object(Bucket="ganray", Key="hostile/planted.txt")


# -- a stack of this module's own, started without authentication ----------------------------------

SPAWNER = """
import json, os, subprocess, ray
ray.init(logging_level="ERROR", log_to_driver=False, namespace="hostile")

@ray.remote(num_cpus=0)
class Spawner:
    def start(self):
        own = subprocess.Popen(["sleep", "600"])  # in the worker's own group
        away = subprocess.Popen(["sleep", "601"], start_new_session=True)  # a session of its own
        return [os.getpid(), own.pid, away.pid]

spawner = Spawner.options(name="spawner", lifetime="detached").remote()
print(json.dumps(ray.get(spawner.start.remote())))
"""


@pytest.fixture(scope="module")
def open_stack():
    """A stack of its own home, running without authentication (as one started before it was the default)."""
    from orchestrator.stack.local_stack import LocalStack

    from orchestrator.stack.local_stack import StackError

    homes = []
    try:
        for attempt in range(2):  # in the full suite its Ray once exited at start with an empty log (see the
            homes.append(Path(tempfile.mkdtemp(prefix="ghs-", dir="/tmp")))  # closing note); one fresh retry
            try:
                profile = LocalStack(homes[-1]).up(auth=False, timeout=600)
                break
            except StackError as err:
                if attempt:
                    raise
                print(f"open_stack: the first start failed, retrying in a fresh home: {err}", file=sys.stderr)
        assert profile["mlflow_auth"] is False
        yield homes[-1]
    finally:
        for home in homes:
            LocalStack(home).down()
            shutil.rmtree(home, ignore_errors=True)


@pytest.mark.ray
def test_a_stack_running_without_auth_keeps_running_and_is_told_once_how_to_switch(open_stack):
    from orchestrator.stack.local_stack import LocalStack

    home = open_stack
    before = LocalStack(home).services()["mlflow"].pid
    uri = json.loads((home / "profile.json").read_text())["mlflow_uri"]
    up = ganray(home, "local", "up")
    assert LocalStack(home).services()["mlflow"].pid == before and _anonymous(uri) == [200, 200]
    switch = "to switch authentication on: `ganray local down`, then `ganray local up`"
    assert up.stderr.count(switch) == 1 and "ganray: warning: MLflow runs without authentication" in up.stderr
    assert "without authentication" in up.stdout  # the status line
    opted_out = ganray(home, "local", "up", "--no-auth")
    assert "ganray: warning: MLflow runs without authentication" in opted_out.stderr and switch not in opted_out.stderr
    refused = ganray(home, "local", "up", "--auth", check=False)
    assert refused.returncode == 1 and "`ganray local down` first" in refused.stderr


@pytest.mark.ray
def test_local_down_stops_exactly_the_processes_the_stack_started(open_stack):
    from orchestrator.cluster.endpoints import stack_env
    from orchestrator.stack.local_stack import LocalStack, ray_session_root

    home = open_stack
    stack = LocalStack(home)
    env = {**cli_env(home), **stack_env(home, stack.profile(), stack.credentials())}
    spawned = subprocess.run([sys.executable, "-c", SPAWNER], env=env, capture_output=True, text=True, timeout=600)
    assert spawned.returncode == 0, spawned.stderr[-3000:]
    actor, own, away = json.loads(spawned.stdout.strip().splitlines()[-1])
    logs = Path(ray_session_root(home)) / "session_latest" / "logs"
    # A user's shell that names the stack everywhere: its environment, and the temp dir in the argv.
    tail = subprocess.Popen(["tail", "-f", str(logs / "raylet.out")], env=env, stdout=subprocess.DEVNULL,
                            start_new_session=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", ray_session_root(home)],
                               env=env, start_new_session=True)
    try:
        started = {pid for svc in stack.services().values() for pid in _group(svc.pid)} | {actor, own, away}
        assert all(_alive(p) for p in started) and os.getpgid(actor) == actor and os.getsid(away) == away
        strays = stack.ray_strays()  # what `down` sweeps after the head's group: found, not matched by name
        assert {actor, own, away} <= set(strays) and not {tail.pid, sleeper.pid} & set(strays)
        down = ganray(home, "local", "down")
        assert "stopped: ray, mlflow" in down.stdout
        assert _wait_dead(started) == [], "processes of the stack left running"
        assert tail.poll() is None, "a `tail -f` of a Ray log was stopped with the stack"
        assert sleeper.poll() is None, "a process naming the Ray temp dir was stopped with the stack"
    finally:
        _end(tail, sleeper)


@pytest.mark.ray
def test_after_down_up_starts_mlflow_with_authentication(open_stack):
    from orchestrator.stack.local_stack import LocalStack

    home = open_stack
    up = ganray(home, "local", "up", timeout=900)
    profile = json.loads((home / "profile.json").read_text())
    assert profile["mlflow_auth"] is True and "MLflow asks for a login" in up.stdout
    assert "without authentication" not in up.stdout + up.stderr
    assert _anonymous(profile["mlflow_uri"]) == [401, 401]
    assert ganray(home, "models", "list", "--json").stdout.strip() == "[]"
    markers = [svc.marker for svc in LocalStack(home).services().values()]
    ganray(home, "local", "down")
    left = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        left += [entry.name for m in markers if m and m.encode() in environ]
    assert _wait_dead([int(p) for p in left]) == [], "processes of the stack left after `local down`"
