"""The shell the spot pods run, run here: notice-agent.sh runs `ganray agent` for the Ray node its VM holds,
found from the files that node's pod leaves in the Ray temp dir they share (Ray's ray_current_cluster and
session_latest, the init container's ganray_auth_token), follows the VM to its next Ray pod and stops on
SIGTERM; the Ray worker's preStop hook holds the pod while a Ray Train worker runs, then takes the files
back. The hostile cases (a forged raylet process, files someone else could write) are tests/test_hostile_k8s.py's.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest

from k8s_manifests import (RECORDING_AGENT, alive, find, ray_session, render, start_agent_script, stop_agent_script,
                           until)

HEAD = "ganray-head-svc.ganray.svc.cluster.local:6379"
TRAIN_HEAD = "ganray-train-x7k2p-head-svc.ganray.svc.cluster.local:6379"


def _called(tmp_path) -> str:
    path = tmp_path / "called"
    return path.read_text().strip() if path.exists() else ""


def test_the_agent_runs_for_the_ray_node_of_this_vm_and_follows_the_vm_to_its_next_one(tmp_path):
    script = start_agent_script(tmp_path, RECORDING_AGENT, "--provider", "aws", "--margin-s", "10")
    try:
        time.sleep(0.5)
        assert script.poll() is None and not _called(tmp_path)  # no Ray pod on this VM yet: it waits
        ray_session(tmp_path / "ray", HEAD, token="token-of-ganray")
        assert until(lambda: _called(tmp_path) == f"agent --address {HEAD} --provider aws --margin-s 10")
        assert (tmp_path / "called.token").read_text() == "token-of-ganray"  # that cluster's own token
        # The RayCluster's pod goes and a RayJob's cluster (a generated name) brings the next one: its init
        # container takes the address back, then Ray writes the new one; the agent follows without exiting.
        first = int((tmp_path / "called.pid").read_text())
        (tmp_path / "ray" / "ray_current_cluster").unlink()
        assert until(lambda: not alive(first))
        (tmp_path / "called").unlink()
        time.sleep(0.3)
        assert script.poll() is None and not _called(tmp_path)  # the VM between two Ray pods: it waits
        ray_session(tmp_path / "ray", TRAIN_HEAD, token="token-of-the-rayjob", session="session_2")
        assert until(lambda: _called(tmp_path) == f"agent --address {TRAIN_HEAD} --provider aws --margin-s 10")
        assert (tmp_path / "called.token").read_text() == "token-of-the-rayjob"
        assert script.poll() is None
    finally:
        log = stop_agent_script(script)
    assert f"Ray cluster at '{HEAD}'" in log and f"Ray cluster at '{TRAIN_HEAD}'" in log
    assert "token-of" not in log  # the token is a file the agent reads, never a logged value


@pytest.mark.parametrize("address", ["10.1.2.3:6379", "[fd00::12]:6379"])
def test_ip_addresses_are_addresses_too(tmp_path, address):
    ray_session(tmp_path / "ray", address)
    script = start_agent_script(tmp_path, RECORDING_AGENT, "--provider", "gcp")
    try:
        assert until(lambda: _called(tmp_path) == f"agent --address {address} --provider gcp")
    finally:
        stop_agent_script(script)


def test_a_restarted_raylet_restarts_the_agent_for_the_new_node(tmp_path):
    ray_session(tmp_path / "ray", HEAD)
    script = start_agent_script(tmp_path, 'echo started >> "$CALLED.starts"; exec sleep 60', "--provider", "gcp")
    starts = tmp_path / "called.starts"
    try:
        assert until(lambda: starts.exists() and starts.read_text().count("started") == 1)
        # Ray restarted in the same pod (same cluster, same session folder): a new raylet, a new node id.
        (tmp_path / "ray" / "session_1" / "sockets" / "raylet.1").write_text("")
        assert until(lambda: starts.read_text().count("started") == 2)
        time.sleep(0.5)
        assert starts.read_text().count("started") == 2 and script.poll() is None
    finally:
        stop_agent_script(script)


def test_an_agent_that_fails_takes_the_script_down_with_its_status(tmp_path):
    ray_session(tmp_path / "ray", HEAD)
    script = start_agent_script(tmp_path, "exit 3", "--provider", "gcp")
    try:
        assert script.wait(timeout=10) == 3
    finally:
        log = stop_agent_script(script)
    assert "exited with status 3" in log


def test_sigterm_stops_the_agent_and_the_script(tmp_path):
    ray_session(tmp_path / "ray", HEAD)
    script = start_agent_script(tmp_path, 'echo $$ > "$CALLED.pid"; exec sleep 60', "--provider", "aws")
    pid_file = tmp_path / "called.pid"
    try:
        assert until(lambda: pid_file.exists() and pid_file.read_text().strip())
        agent = int(pid_file.read_text())
        script.send_signal(signal.SIGTERM)  # the kubelet's, when the pod goes
        assert script.wait(timeout=10) != 0
        assert until(lambda: not alive(agent))
    finally:
        stop_agent_script(script)


def test_the_prestop_hook_holds_the_pod_while_a_train_worker_runs_then_takes_the_files_back(tmp_path):
    worker = find(render("overlays/aws"), "RayCluster", "ganray")["spec"]["workerGroupSpecs"][0]
    command = worker["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"] and "/proc/" in command[2] and "/tmp/ray/" in command[2]
    hook = [*command[:2], command[2].replace("/proc/", f"{tmp_path}/proc/").replace("/tmp/ray/", f"{tmp_path}/ray/")]
    ray_session(tmp_path / "ray", HEAD)
    (tmp_path / "proc" / "11").mkdir(parents=True)
    (tmp_path / "proc" / "11" / "cmdline").write_bytes(b"ray::IDLE\0")
    train = tmp_path / "proc" / "12"
    train.mkdir()
    (train / "cmdline").write_bytes(b"ray::RayTrainWorker.run_train_fn\0")
    held = subprocess.Popen(hook)
    try:
        time.sleep(1.0)
        assert held.poll() is None and (tmp_path / "ray" / "ray_current_cluster").exists()
        shutil.rmtree(train)
        assert held.wait(timeout=10) == 0
    finally:
        held.kill()
    # The VM's next pod, or none: the address and the token of this one are gone from the host.
    assert not (tmp_path / "ray" / "ray_current_cluster").exists()
    assert not (tmp_path / "ray" / "ganray_auth_token").exists()
