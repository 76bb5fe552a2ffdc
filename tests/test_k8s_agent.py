"""The shell the spot pods run, run here: notice-agent.sh finds the raylet of its host and runs
`ganray agent` for that raylet's cluster, and stops when the raylet goes; the Ray worker's preStop
hook holds the pod while a Ray Train worker runs. A folder stands in for /proc, a recording script
for `ganray` (the real agent needs a cloud's metadata server and a Ray node on the same host)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from k8s_manifests import K8S, find, render

SCRIPT = K8S / "base" / "notice-agent.sh"


def _process(proc: Path, pid: int, *argv: str) -> Path:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return proc / str(pid)


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _start(tmp_path: Path, fake_ganray: str, *args: str) -> subprocess.Popen:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ganray").write_text(f"#!/bin/sh\n{fake_ganray}\n")
    (bin_dir / "ganray").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NOTICE_AGENT_PROC": str(tmp_path / "proc"),
           "NOTICE_AGENT_WAIT_S": "0.1", "CALLED": str(tmp_path / "called")}
    return subprocess.Popen(["sh", str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, text=True)


def test_the_agent_runs_for_this_hosts_raylet_and_stops_with_it(tmp_path):
    proc = tmp_path / "proc"
    # The dashboard agent names the raylet's socket and the GCS too: it is not the raylet.
    _process(proc, 1000, "/usr/bin/python", "-u", "/ray/dashboard/agent.py",
             "--raylet-name=/tmp/ray/session_1/sockets/raylet", "--gcs-address=10.9.9.9:6379")
    script = _start(tmp_path, 'echo "$@" > "$CALLED"; exec sleep 60', "--provider", "aws", "--margin-s", "10")
    try:
        time.sleep(0.5)
        assert script.poll() is None and not (tmp_path / "called").exists()  # waits for a raylet
        raylet = _process(proc, 4242, "/opt/ray/core/src/ray/raylet/raylet", "--node_id=ab12",
                          "--gcs-address=10.1.2.3:6379", "--session-name=session_1")
        assert _until(lambda: (tmp_path / "called").exists())
        assert _until(lambda: (tmp_path / "called").read_text().strip()
                      == "agent --address 10.1.2.3:6379 --provider aws --margin-s 10")
        time.sleep(0.3)
        assert script.poll() is None
        shutil.rmtree(raylet)  # the Ray pod went: the agent stops, and the kubelet restarts the script
        assert _until(lambda: script.poll() is not None)
        assert "raylet 4242 is gone" in script.stdout.read()
    finally:
        script.kill()


def test_an_agent_that_fails_takes_the_script_down_with_its_status(tmp_path):
    _process(tmp_path / "proc", 7, "/ray/raylet", "--gcs-address=10.1.2.3:6379")
    script = _start(tmp_path, "exit 3", "--provider", "gcp")
    try:
        assert script.wait(timeout=10) == 3
    finally:
        script.kill()


def test_the_prestop_hook_holds_the_pod_while_a_train_worker_runs(tmp_path):
    worker = find(render("overlays/aws"), "RayCluster", "ganray")["spec"]["workerGroupSpecs"][0]
    command = worker["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"] and "/proc/" in command[2]
    hook = [*command[:2], command[2].replace("/proc/", f"{tmp_path}/proc/")]
    _process(tmp_path / "proc", 11, "ray::IDLE")
    assert subprocess.run(hook, timeout=10).returncode == 0  # no training worker: returns at once
    train = _process(tmp_path / "proc", 12, "ray::RayTrainWorker.run_train_fn")
    held = subprocess.Popen(hook)
    try:
        time.sleep(1.0)
        assert held.poll() is None
        shutil.rmtree(train)
        assert held.wait(timeout=10) == 0
    finally:
        held.kill()
