"""MLflow going away mid-run: the controller keeps every report (with its step and time) and sends it once
the server is back; the driver's finishing waits for it; the run ends complete. Real MLflow servers only:
the session stack's, stopped and started again by PID on its port, and a port nobody listens on."""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import ROOT, cli_env, ganray
from orchestrator.controller.outbox import Outbox
from orchestrator.tracking_server import QUICK_REQUESTS, patiently, unreachable
from orchestrator.tracking_server import TrackingError
from orchestrator.stack.processes import free_port
from specs import DCGAN, job_spec, write_spec

REPORT_EVERY_S = 2.5
OUTAGE_S = 20.0  # eight report intervals


@pytest.fixture(autouse=True)
def quick_mlflow_requests(monkeypatch):
    for k, v in QUICK_REQUESTS.items():
        monkeypatch.setenv(k, v)


def _run(c: MlflowClient, name: str) -> str:
    exp = c.get_experiment_by_name("outage-tests") or c.get_experiment(c.create_experiment("outage-tests"))
    return c.create_run(exp.experiment_id, run_name=name).info.run_id


def test_what_counts_as_unreachable_is_told_from_a_refusal(tracking_uri):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MlflowException) as away:
        MlflowClient(dead).get_run("0" * 32)
    with pytest.raises(MlflowException) as refused:
        MlflowClient(tracking_uri).get_run("0" * 32)
    assert unreachable(away.value) and not unreachable(refused.value)
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="MLflow unreachable for [0-9]+s while asking"):
        patiently(lambda: MlflowClient(dead).get_run("0" * 32), "asking", patience_s=3)
    assert 3 <= time.monotonic() - t0 < 30
    with pytest.raises(MlflowException):  # a refusal is not waited on
        patiently(lambda: MlflowClient(tracking_uri).get_run("0" * 32), "asking", patience_s=60)


def test_the_outbox_keeps_everything_while_away_and_sends_it_in_order(tracking_uri, tmp_path, caplog):
    c = MlflowClient(tracking_uri)
    run_id = _run(c, "outbox")
    away = Outbox(f"http://127.0.0.1:{free_port()}", run_id)
    metrics = [Metric("step", float(i), 1_700_000_000_000 + i * 2500, i) for i in range(1200)]
    away.put(metrics[:600], {"ganray.checkpoint_step": "1"}, {"preemptions.json": "[1]"})
    grid = away.stage("step_000000001.png")
    Path(grid).write_bytes(b"png")
    away.put_file(grid, "samples")
    assert not away.drain(4) and away.away()
    assert {k: v for k, v in away.pending().items() if k != "sending"} == {"metrics": 600, "tags": 1, "files": 1,
                                                                          "texts": 1}
    assert Path(grid).exists() and "MLflow unreachable" in caplog.text
    away.close()
    assert not Path(grid).parent.exists()

    back = Outbox(tracking_uri, run_id)  # the same reports, to a server that answers
    back.put(metrics[:600], {"ganray.checkpoint_step": "1"}, {"preemptions.json": "[1]"})
    grid = back.stage("step_000000001.png")
    Path(grid).write_bytes(b"png")
    back.put_file(grid, "samples")
    back.put(metrics[600:], {"ganray.checkpoint_step": "2"}, {"preemptions.json": "[1, 2]"})
    assert back.drain(120) and not back.away()
    history = c.get_metric_history(run_id, "step")
    assert sorted((m.timestamp, m.step, m.value) for m in history) == [(m.timestamp, m.step, m.value) for m in metrics]
    run = c.get_run(run_id)
    assert run.data.tags["ganray.checkpoint_step"] == "2"
    assert {a.path for a in c.list_artifacts(run_id, "samples")} == {"samples/step_000000001.png"}
    assert Path(c.download_artifacts(run_id, "preemptions.json", str(tmp_path))).read_text() == "[1, 2]"
    assert not Path(grid).parent.exists()  # the folder of unsent files goes once they are sent
    back.close()


def test_the_callback_keeps_reports_and_merges_the_recorded_timeline_once_mlflow_answers(tracking_uri, tmp_path):
    from orchestrator.controller.report_callback import MlflowReportCallback

    c = MlflowClient(tracking_uri)
    run_id = _run(c, "timeline")
    old = {"kind": "preemption", "resumed_from_step": 4, "steps_lost": 2}
    c.log_text(run_id, json.dumps([old]), "preemptions.json")
    c.log_metric(run_id, "step", 10, step=10)
    cb = MlflowReportCallback(f"http://127.0.0.1:{free_port()}", run_id, str(tmp_path))
    t0 = time.time()
    cb.after_report(None, [{"step": 12, "total_steps": 100, "resumed_from_step": 10, "restored_ts": 1.0,
                            "first_step_ts": 2.0}], None)
    cb.after_report(None, [{"step": 14, "total_steps": 100}], None)
    assert time.time() - t0 < 15 and not cb._timeline_loaded  # reports never wait for the server
    cb.tracking_uri = cb._outbox.tracking_uri = tracking_uri  # the server answers again
    assert cb._outbox.drain(120)
    cb.after_report(None, [{"step": 16, "total_steps": 100}], None)
    assert cb._outbox.drain(120)
    events = json.loads(Path(c.download_artifacts(run_id, "preemptions.json", str(tmp_path))).read_text())
    assert events[0] == old and [e["kind"] for e in events] == ["preemption", "failure"]
    assert events[1]["resumed_from_step"] == 10
    metrics = c.get_run(run_id).data.metrics
    assert (metrics["preemptions"], metrics["failures"], metrics["steps_lost_total"]) == (1, 1, 2)
    assert sorted(m.value for m in c.get_metric_history(run_id, "step")) == [10, 12, 14, 16]
    cb._outbox.close()


def test_the_progress_thread_outlives_an_unreachable_server(tracking_uri, ganray_home, caplog):
    from orchestrator.job import host_record
    from orchestrator.job.progress import Progress

    c = MlflowClient(tracking_uri)
    run_id = _run(c, "progress")
    c.log_batch(run_id, metrics=[Metric("total_steps", 10, 0, 3), Metric("step", 3, 0, 3)])
    progress = Progress(MlflowClient(f"http://127.0.0.1:{free_port()}"), run_id, "progress-job", 10, enabled=False,
                        every_s=0.2)
    with caplog.at_level(logging.WARNING, logger="ganray.progress"), progress:
        time.sleep(2)
        assert progress._thread.is_alive() and host_record.read_record("progress-job") is None
        progress.client = c  # the server answers again
        deadline = time.time() + 60
        while (host_record.read_record("progress-job") or {}).get("step") != 3:
            assert progress._thread.is_alive() and time.time() < deadline
            time.sleep(0.2)
    assert caplog.text.count("progress not updated") == 1  # noted once, not once per tick


@pytest.fixture(scope="module")
def outage_data(stack, ganray_home, faces):
    ganray(ganray_home, "data", "ingest", str(faces), "s3://ganray/data/outage", "--labels", str(faces / "labels.csv"))
    return "s3://ganray/data/outage"


def _steps_for(seconds: float, dataset: str) -> int:
    """Steps that take about `seconds` of training on this machine now (measured in-process), so that
    the outage lands mid-run on an idle machine and a busy one alike."""
    import torch

    from trainers.loop import GanLoop

    # as one of the job's two Ray Train workers: half the batch, one torch thread (cpus_per_worker: 1)
    spec = job_spec("calib", dataset, model=DCGAN, train={"steps": 60, "batch_size": 8, "report_every_s": 0.5},
                    checkpoint={"every_steps": 1000})

    class Rates:
        def __init__(self):
            self.rates = []

        def report(self, metrics, checkpoint_dir, name):
            self.rates.append(metrics["img_per_sec"])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loop, rates = GanLoop(spec), Rates()
    try:
        loop.run(rates)
    finally:
        loop.stream.close()
        torch.set_num_threads(threads)
    per_step = 8 / sorted(rates.rates)[len(rates.rates) // 2]  # steady state: the median window
    return int(min(3000, max(150, seconds / per_step)) // 30 * 30)


def _wait_for_first_report(c: MlflowClient, name: str, proc: subprocess.Popen, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the job ended before it reported"
        try:
            runs = c.search_runs([c.get_experiment_by_name("ganray").experiment_id],
                                 filter_string=f"tags.`ganray.job` = '{name}'")
            if runs and c.get_metric_history(runs[0].info.run_id, "step"):
                return runs[0].info.run_id
        except (MlflowException, AttributeError):
            pass
        time.sleep(0.5)
    raise AssertionError("no report within the timeout")


@pytest.mark.ray
def test_a_job_goes_on_through_an_mlflow_outage_and_ends_complete(stack, ganray_home, tracking_uri, outage_data,
                                                                  dataset, tmp_path):
    steps = _steps_for(120, dataset)
    every = steps // 3
    spec = write_spec(tmp_path / "outage.yaml", "outage", outage_data, model=DCGAN,
                      train={"steps": steps, "batch_size": 16, "report_every_s": REPORT_EVERY_S},
                      scaling={"workers": 2}, checkpoint={"every_steps": every, "keep": 2})
    c = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    err = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ganray"), "run", str(spec), "--quiet"], cwd=ROOT,
                            env=cli_env(ganray_home), stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        run_id = _wait_for_first_report(c, "outage", proc)
        t_down = time.time()
        stack.stop_service("mlflow")
        time.sleep(OUTAGE_S)
        assert proc.poll() is None, "the driver gave up while MLflow was away"
        stack.start_service("mlflow")
        t_up = time.time()
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not stack.services()["mlflow"].alive():
            stack.start_service("mlflow")
        err.seek(0)
        stderr = err.read()
        err.close()
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads(out)
    assert summary["state"] == "finished" and summary["steps"] == steps and isinstance(summary["version"], int)
    version = c.get_model_version("outage", str(summary["version"]))
    assert version.run_id == run_id and version.tags["step"] == str(steps)

    history = sorted(c.get_metric_history(run_id, "step"), key=lambda m: m.timestamp)
    stamps = [m.timestamp / 1000 for m in history]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    during = [m for m in history if t_down < m.timestamp / 1000 < t_up]
    print(f"steps {steps}; outage {t_up - t_down:.1f}s; {len(history)} step reports, {len(during)} made while "
          f"MLflow was down; largest gap {max(gaps):.2f}s")
    assert stamps[0] < t_down and max(gaps) <= 3 * REPORT_EVERY_S
    assert len(during) >= 3 and all(m.step == int(m.value) for m in history)
    assert [m.value for m in history] == sorted(m.value for m in history) and history[-1].value == steps

    run = c.get_run(run_id)
    assert run.data.tags["ganray.state"] == "finished" and run.info.status == "FINISHED"
    assert run.data.tags["ganray.checkpoint_uri"] == summary["checkpoint_uri"]
    assert run.data.tags["ganray.checkpoint_step"] == str(steps) and json.loads(run.data.tags["ganray.summary"])
    grids = {a.path for a in c.list_artifacts(run_id, "samples")}
    assert grids == {f"samples/step_{s:09d}.png" for s in range(every, steps + 1, every)}
    assert "progress not updated" in stderr  # the driver said so, once, and went on
    status = json.loads(ganray(ganray_home, "status", "outage", "--json").stdout)
    assert (status["state"], status["step"]) == ("finished", steps)
