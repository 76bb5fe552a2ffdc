"""Chaos: spot notices, vanished nodes, a killed driver and a cluster that shrinks.

The module shares one cluster: a head and two worker nodes (separate `ray start` processes, one
Train worker each). Each test runs a job through `ganray run` against the session's MLflow and S3
servers and breaks something; a node it kills is replaced (for the elastic job, by the next test's
fixture). Truth comes from the sample-key log that every worker writes (GANRAY_SAMPLE_LOG, one file per
job, rank and process): which steps were computed, in which process, on which samples. Ray's
node-death detection and drain polling are tuned down (tests/cluster.py FAST_DETECTION) to keep the
suite short.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from cluster import LocalCluster
from conftest import ROOT, ganray
from fake_metadata import serve
from specs import write_spec
from stack_mlflow import mlflow_client

pytestmark = pytest.mark.ray
BATCH = 16
MODEL = {"arch": "dcgan", "z_dim": 16, "channels": 16}
PREEMPTION = {"check_every_s": 0.5, "margin_s": 3.0, "max_failures": 3}


@pytest.fixture(scope="module")
def chaos_data(stack, ganray_home, faces):
    ganray(ganray_home, "data", "ingest", str(faces), "s3://ganray/data/chaos", "--labels", str(faces / "labels.csv"))
    return "s3://ganray/data/chaos"


@pytest.fixture(scope="module")
def shared_cluster(stack, ganray_home, tmp_path_factory):
    from orchestrator.cluster.endpoints import stack_env

    root = tmp_path_factory.mktemp("chaos")
    env = {**stack_env(ganray_home, stack.profile(), stack.credentials(), ray=False), "GANRAY_HOME": str(ganray_home),
           "GANRAY_SAMPLE_LOG": str(root / "samples")}
    c = LocalCluster(root / "cluster", env)
    try:
        c.start_head()
        c.add_node("a")
        c.add_node("b")
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(shared_cluster):
    """The module's cluster with two live worker nodes (a test before may have left one)."""
    while len(live_workers(shared_cluster)) < 2:
        replace_node(shared_cluster)
    return shared_cluster


def live_workers(cluster: LocalCluster) -> list[str]:
    return [name for name, node in cluster.nodes.items() if name != "head" and node.alive()]


def replace_node(cluster: LocalCluster) -> str:
    """A replacement node joins (a fresh name: Ray keeps the dead one's record)."""
    name = f"n{len(cluster.nodes)}"
    cluster.add_node(name)
    return name


def sample_dir(cluster: LocalCluster) -> Path:
    return Path(cluster.env["GANRAY_SAMPLE_LOG"])


def start_job(cluster: LocalCluster, spec: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "ganray"), "run", str(spec), "--quiet"], cwd=ROOT,
                            env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 400) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-5000:]
    return json.loads(out)


def computed_steps(log_dir: Path, job: str) -> dict[int, list[dict]]:
    """step -> the log entries of every process of job that computed it."""
    steps = defaultdict(list)
    for f in sorted(log_dir.glob(f"{job}-rank*.jsonl")):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            steps[e["step"]].append({**e, "proc": f.name})
    return steps


def wait_for_step(log_dir: Path, job: str, at_least: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log_dir.exists() and max(computed_steps(log_dir, job) or [0]) >= at_least:
            return
        time.sleep(0.3)
    raise TimeoutError(f"training never reached step {at_least}")


def wait_for_checkpoint(ganray_home: Path, name: str, step: int, timeout: float = 180) -> None:
    """Waits until Ray Train has committed a checkpoint at or after step (the job's MLflow run says so)."""
    client = mlflow_client(ganray_home)
    record, deadline = ganray_home / "jobs" / f"{name}.json", time.time() + timeout
    while time.time() < deadline:
        if record.exists():
            tags = client.get_run(json.loads(record.read_text())["run_id"]).data.tags
            if int(tags.get("ganray.checkpoint_step", 0)) >= step:
                return
        time.sleep(0.3)
    raise TimeoutError(f"no checkpoint at step >= {step} was committed")


def check_epochs(steps: dict[int, list[dict]], num_samples: int, world: int) -> None:
    """Within each epoch no sample is seen twice, and the epoch is covered but for its tail."""
    # the loop's batches may straddle epochs; count by position in the global order
    keys = [k for s in sorted(steps) for e in sorted(steps[s], key=lambda e: e["rank"]) for k in e["keys"]]
    per_epoch = num_samples - num_samples % world
    assert len(keys) >= per_epoch, "the job should run at least one epoch"
    for i in range(0, len(keys) - per_epoch + 1, per_epoch):
        epoch = keys[i:i + per_epoch]
        assert len(set(epoch)) == len(epoch), "a sample was seen twice within one epoch"
    assert len(set(keys[:per_epoch])) == per_epoch, "the first epoch covers the dataset but for its tail"


def run_timeline(ganray_home: Path, run_id: str) -> list[dict]:
    uri = json.loads((ganray_home / "profile.json").read_text())["mlflow_uri"]
    import mlflow

    mlflow.set_tracking_uri(uri)
    return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/preemptions.json"))


def test_spot_notice_costs_no_step(cluster, chaos_data, ganray_home, tmp_path):
    victim = live_workers(cluster)[0]
    server, state = serve()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    agent = subprocess.Popen([str(Path(sys.executable).parent / "ganray"), "agent", "--provider", "aws",
                              "--metadata-url", url, "--node-id", cluster.nodes[victim].node_id, "--margin-s", "5",
                              "--poll-s", "0.5", "--address", cluster.address],
                             env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps = 400
    spec = write_spec(tmp_path / "job.yaml", "chaos-notice", chaos_data, model=MODEL,
                      train={"steps": steps, "batch_size": BATCH, "report_every_s": 1.0}, scaling={"workers": 2},
                      checkpoint={"every_steps": 1000, "keep": 2}, preemption=PREEMPTION)
    job = start_job(cluster, spec)
    try:
        wait_for_step(sample_dir(cluster), "chaos-notice", 20)
        state.terminate_at = time.time() + 20  # AWS would say 120 s; the agent drains 5 s earlier
        time.sleep(21)
        cluster.kill_node(victim)
        replace_node(cluster)
        summary = finish(job)
    finally:
        agent.terminate()
        agent_log = agent.communicate(timeout=10)[0]
        server.shutdown()
    assert "preemption notice 'aws:terminate'" in agent_log and "node drained" in agent_log
    assert summary["steps"] == steps and summary["state"] == "finished"
    computed = computed_steps(sample_dir(cluster), "chaos-notice")
    assert sorted(computed) == list(range(1, steps + 1))
    twice = [s for s, es in computed.items() if len({e["proc"] for e in es}) > 2 or len(es) != 2]
    assert not twice, f"steps computed twice (lost work): {twice[:10]}"
    check_epochs(computed, 240, 2)
    events = run_timeline(ganray_home, summary["run_id"])
    assert [e["kind"] for e in events] == ["preemption"] and events[0]["steps_lost"] == 0
    ev = events[0]
    assert ev["notice_ts"] < ev["checkpoint_committed_ts"] < ev["deadline_ts"] + 2 < ev["first_step_ts"] + 2
    status = json.loads(ganray(ganray_home, "status", "chaos-notice", "--json").stdout)
    assert status["state"] == "finished"


def lost_steps(computed: dict[int, list[dict]]) -> list[int]:
    """Steps computed by more than one worker group (work thrown away by a crash)."""
    return [s for s, es in computed.items() if len({e["proc"] for e in es}) > len({e["rank"] for e in es})]


def test_a_node_killed_without_notice_loses_at_most_one_interval_and_an_elastic_job_goes_on_with_fewer(
        cluster, chaos_data, ganray_home, tmp_path):
    """No notice and no replacement: the job falls back to its last committed checkpoint (losing at most
    one checkpoint interval) and, elastic (workers [1, 2]), finishes on the one worker left with the same
    global batch. The node it kills is not replaced (the next test's fixture replaces it).

    It runs before the killed-driver test: a killed driver's Train controller never withdraws its
    request from Ray's AutoscalingCoordinator, whose reservation then holds the cluster's CPUs against
    any elastic job until it expires (180 s); a fixed-size job does not consult it."""
    # The kill comes once the job's MLflow run shows checkpoint `every` committed, which trails the workers
    # by 2-4 s (the controller drains reports every 2 s); the interval must exceed the steps done in that
    # time (~45 steps/s here when idle), or the kill lands after the next checkpoint was uploaded but
    # before it was committed, and one interval plus those steps is lost.
    steps, every = 600, 300
    spec = write_spec(tmp_path / "job.yaml", "chaos-kill", chaos_data, model=MODEL,
                      train={"steps": steps, "batch_size": BATCH, "report_every_s": 1.0}, scaling={"workers": [1, 2]},
                      checkpoint={"every_steps": every, "keep": 2}, preemption=PREEMPTION)
    job = start_job(cluster, spec)
    wait_for_checkpoint(ganray_home, "chaos-kill", every)
    cluster.kill_node(live_workers(cluster)[0])
    summary = finish(job)
    assert summary["steps"] == steps
    computed = computed_steps(sample_dir(cluster), "chaos-kill")
    assert sorted(computed) == list(range(1, steps + 1))
    lost = lost_steps(computed)
    assert 0 < len(lost) <= every, lost
    events = run_timeline(ganray_home, summary["run_id"])
    assert [e["kind"] for e in events] == ["failure"] and events[0]["steps_lost"] <= every
    last = computed[steps]
    assert len(last) == 1 and len(last[0]["keys"]) == BATCH  # one worker, the same global batch
    client = mlflow_client(ganray_home)
    assert client.get_run(summary["run_id"]).data.metrics["world_size"] == 1


def test_a_killed_driver_is_recovered_by_running_the_job_again(cluster, chaos_data, ganray_home, tmp_path):
    steps, every = 200, 30
    spec = write_spec(tmp_path / "job.yaml", "chaos-driver", chaos_data, model=MODEL,
                      train={"steps": steps, "batch_size": BATCH, "report_every_s": 1.0}, scaling={"workers": 2},
                      checkpoint={"every_steps": every, "keep": 2}, preemption=PREEMPTION)
    job = start_job(cluster, spec)
    wait_for_checkpoint(ganray_home, "chaos-driver", every)
    run_id = json.loads((ganray_home / "jobs" / "chaos-driver.json").read_text())["run_id"]
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    time.sleep(3)  # Ray notices the driver is gone and removes its actors
    summary = finish(start_job(cluster, spec))
    assert summary["steps"] == steps and summary["run_id"] == run_id  # the same MLflow run continues
    computed = computed_steps(sample_dir(cluster), "chaos-driver")
    assert sorted(computed) == list(range(1, steps + 1))
    first_of_rerun = min(s for s, es in computed.items() if len({e["proc"] for e in es}) > 2 or
                         all(e["proc"] not in {x["proc"] for x in computed[1]} for e in es))
    assert first_of_rerun > every and (first_of_rerun - 1) % every == 0  # resumed from a checkpoint, not step 0
    assert [e["kind"] for e in run_timeline(ganray_home, run_id)] == ["rerun"]
