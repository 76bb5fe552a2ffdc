"""The embedded stack's own mechanics: ports taken between pick and start are retried on fresh ones, one
service stops and starts again on its port, and temp folders of processes that are gone are swept."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from orchestrator.stack.local_stack import LocalStack, StackError
from orchestrator.stack.processes import pid_alive
from trainers import tempdirs

@pytest.mark.ray
def test_a_port_taken_between_pick_and_start_is_retried_and_one_service_restarts_on_its_port(caplog):
    home = Path(tempfile.mkdtemp(prefix="gst-", dir="/tmp"))
    held: dict[str, tuple[socket.socket, int]] = {}

    def take(name: str, ports: dict[str, int]) -> None:  # another process binds the port just picked
        role = {"mlflow": "mlflow", "ray": "gcs"}.get(name)
        if role and name not in held:
            s = socket.socket()
            s.bind(("127.0.0.1", ports[role]))
            s.listen()
            held[name] = (s, ports[role])

    stack = LocalStack(home)
    stack.port_hook = take
    try:
        profile = stack.up(timeout=300)
        services = stack.services()
        assert set(held) == {"mlflow", "ray"} and all(s.alive() for s in services.values())
        assert services["mlflow"].port != held["mlflow"][1] and services["ray"].port != held["ray"][1]
        assert profile["mlflow_uri"] == f"http://127.0.0.1:{services['mlflow'].port}"
        assert requests.get(f"{profile['mlflow_uri']}/health", timeout=10).ok
        retried = [r.getMessage() for r in caplog.records if "taken between pick and start" in r.getMessage()]
        assert any(str(held["mlflow"][1]) in m for m in retried) and any(str(held["ray"][1]) in m for m in retried)

        before = services["mlflow"]
        after = stack.restart("mlflow")
        assert after.port == before.port and after.pid != before.pid and not pid_alive(before.pid)
        assert requests.get(f"{profile['mlflow_uri']}/health", timeout=10).ok

        real_start, kills = stack._start_mlflow, {"left": 1}

        def killed_as_it_starts(ports, auth):  # something kills it before it writes a line
            svc = real_start(ports, auth)
            if kills["left"]:
                kills["left"] -= 1
                os.killpg(svc.pid, signal.SIGKILL)
            return svc

        stack._start_mlflow = killed_as_it_starts
        stack.stop_service("mlflow")
        again = stack.start_service("mlflow")  # a silent death while starting is tried once more
        assert again.alive() and requests.get(f"{profile['mlflow_uri']}/health", timeout=10).ok
        assert any("mlflow exited while starting (killed by SIGKILL) without writing" in r.getMessage()
                   for r in caplog.records)
        stack.stop_service("mlflow")
        kills["left"] = 2
        with pytest.raises(StackError, match=r"killed by SIGKILL\) without writing .* \(after 2 attempts\)"):
            stack.start_service("mlflow")
        stack._start_mlflow = real_start
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", after.port))
        squatter.listen()
        try:
            with pytest.raises(StackError, match=f"port {after.port} is taken"):
                stack.start_service("mlflow")
        finally:
            squatter.close()
        with pytest.raises(StackError, match="only the stack's mlflow and s3"):
            stack.start_service("ray")
    finally:
        stack.down()
        for s, _ in held.values():
            s.close()
        shutil.rmtree(home, ignore_errors=True)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_folders_are_swept_and_live_ones_kept(tmp_path):
    now = time.time()
    dead, me = _dead_pid(), os.getpid()
    names = {"stale": f"ganray-ckpt-{dead}-abcd1234", "stale_grid": f"ganray-grid-{dead}-x_9",
             "live": f"ganray-ckpt-{me}-live0001", "reused": f"ganray-grid-{me}-old00001",
             "legacy_old": "ganray-ckpt-a1b2c3d4", "legacy_new": "ganray-ckpt-e5f6g7h8", "other": "ganray-data-1-x"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.pt").write_bytes(b"x")
    # a folder made before this process started cannot be ours: its PID was reused
    os.utime(tmp_path / names["reused"], (now - 10 * 86400, now - 10 * 86400))
    os.utime(tmp_path / names["legacy_old"], (now - 7 * 3600, now - 7 * 3600))
    removed = tempdirs.sweep_stale(str(tmp_path))
    left = {p.name for p in tmp_path.iterdir()}
    assert sorted(Path(r).name for r in removed) == sorted(names[k] for k in ("stale", "stale_grid", "reused",
                                                                              "legacy_old"))
    assert left == {names[k] for k in ("live", "legacy_new", "other")}


def test_the_first_folder_of_a_process_sweeps_and_carries_its_pid(tmp_path, monkeypatch):
    monkeypatch.setattr(tempdirs, "_swept_in", set())
    stale = tmp_path / f"ganray-ckpt-{_dead_pid()}-zzzz0000"
    stale.mkdir()
    made = tempdirs.make("ganray-ckpt-", str(tmp_path))
    assert re.fullmatch(rf"ganray-ckpt-{os.getpid()}-[a-z0-9_]+", Path(made).name)
    assert not stale.exists() and Path(made).is_dir()


def test_the_loop_writes_checkpoints_in_folders_named_after_its_pid_and_sweeps_stale_ones(dataset, tmp_path,
                                                                                         monkeypatch, private_cache):
    from specs import DCGAN, job_spec
    from trainers.loop import GanLoop

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system temp dir, for this test
    monkeypatch.setattr(tempdirs, "_swept_in", set())
    stale = tmp_path / f"ganray-ckpt-{_dead_pid()}-stale001"
    stale.mkdir()
    spec = job_spec("t", dataset, model=DCGAN, train={"steps": 4, "batch_size": 8}, checkpoint={"every_steps": 2})
    folders = []

    class Reporter:
        def report(self, metrics, checkpoint_dir, name):
            if checkpoint_dir:
                folders.append(Path(checkpoint_dir).name)
                assert (Path(checkpoint_dir) / "state.pt").exists()

    loop = GanLoop(spec)
    try:
        loop.run(Reporter())
    finally:
        loop.stream.close()
    assert len(folders) == 2 and all(re.fullmatch(rf"ganray-ckpt-{os.getpid()}-[a-z0-9_]+", f) for f in folders)
    assert not stale.exists()
    assert not list(tmp_path.glob("ganray-ckpt-*"))  # each removed after its report
