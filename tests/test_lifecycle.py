"""The job lifecycle against a real MLflow server, without Ray: every move is checked against the
table and lands in both stores; the state a machine that did not run the job sees is the same."""
from __future__ import annotations

import json

import pytest
import yaml
from ray.train import Result

from conftest import ganray, status_elsewhere
from orchestrator import tracking_server
from orchestrator.job import host_record
from orchestrator.job import runs
from orchestrator.job.lifecycle import RERUNNABLE, TRANSITIONS, Lifecycle, State, TransitionError, check
from specs import TINY_DCGAN, job_spec

S = State


def _new_job(c, name: str, storage: str = "/tmp/unused-storage") -> Lifecycle:
    spec = job_spec(name, "/nonexistent/data", train={"steps": 10})
    return Lifecycle(c, name, runs.create_run(c, spec.to_dict(), spec.digest(), f"{storage}/{name}"), S.CREATED)


def _states(c, life: Lifecycle) -> tuple[str, str]:
    return c.get_run(life.run_id).data.tags[runs.STATE_TAG], host_record.read_record(life.name)["state"]


def test_the_table_allows_reruns_from_running_stopped_interrupted_and_failed_only():
    for state in State:
        assert (S.STARTING in TRANSITIONS[state]) == (state in RERUNNABLE or state is S.CREATED)
    assert {S.RUNNING, S.STOPPED, S.INTERRUPTED, S.FAILED} <= RERUNNABLE and S.FINISHED not in RERUNNABLE
    for frm, to in ((S.FINISHED, S.RUNNING), (S.SUPERSEDED, S.STARTING), (S.CREATED, S.FINISHED),
                    (S.STOPPED, S.FINISHED), (S.FAILED, S.RUNNING)):
        with pytest.raises(TransitionError, match=f"from {frm.value} to {to.value}"):
            check(frm, to)
    assert all(S.SUPERSEDED in TRANSITIONS[s] for s in State if s is not S.SUPERSEDED)


def test_every_move_writes_mlflow_and_the_local_record_and_a_refused_move_changes_nothing(stack, tracking_uri):
    c = tracking_server.client(tracking_uri)
    life = _new_job(c, "life-moves")
    path = [S.STARTING, S.RUNNING, S.STOPPED, S.STARTING, S.RUNNING, S.INTERRUPTED, S.STARTING, S.STARTING,
            S.RUNNING, S.STARTING, S.RUNNING, S.FAILED]
    for to in path:
        life.move(to)
        assert _states(c, life) == (to.value, to.value)
    assert c.get_run(life.run_id).info.status == "FAILED"
    with pytest.raises(TransitionError):
        life.move(S.FINISHED)
    assert _states(c, life) == ("failed", "failed") and life.state is S.FAILED
    seen = status_elsewhere(tracking_uri, "life-moves")
    assert seen["state"] == "failed" and seen["run_id"] == life.run_id and seen["total_steps"] == 10
    assert isinstance(seen["step"], int) and isinstance(seen["preemptions"], int) and seen["failures"] == 0


def test_a_fit_that_raised_or_left_no_checkpoint_is_failed(stack, tracking_uri, tmp_path):
    from orchestrator.job.driver import JobError, outcome

    c = tracking_server.client(tracking_uri)
    for name, result, reason in (
            ("life-error", Result(metrics={}, checkpoint=None, error=RuntimeError("worker 1 died"), path=str(tmp_path)),
             "worker 1 died"),
            ("life-raised", RuntimeError("placement group timed out"), "placement group timed out"),
            ("life-nockpt", Result(metrics={}, checkpoint=None, error=None, path=str(tmp_path)),
             "ended without a checkpoint")):
        life = _new_job(c, name)
        life.move(S.STARTING)
        life.move(S.RUNNING)
        with pytest.raises(JobError, match=reason):
            outcome(name, life, result, "/tmp/unused-storage")
        assert _states(c, life) == ("failed", "failed")
        assert reason in host_record.read_record(name)["error"]
        assert status_elsewhere(tracking_uri, name)["state"] == "failed"


def test_a_refused_changed_spec_leaves_the_state_as_it_was(stack, tracking_uri):
    from orchestrator.job.driver import JobError, run_job

    c = tracking_server.client(tracking_uri)
    life = _new_job(c, "life-changed")
    for to in (S.STARTING, S.RUNNING, S.STOPPED):
        life.move(to)
    with pytest.raises(JobError, match=r"train.steps: 10 -> 11.*--fresh"):
        run_job(job_spec("life-changed", "/nonexistent/data", train={"steps": 11}), progress=False)
    assert _states(c, life) == ("stopped", "stopped")
    assert status_elsewhere(tracking_uri, "life-changed")["state"] == "stopped"


def test_a_driver_that_died_after_registering_finishes_on_the_rerun_without_a_second_version(
        stack, ganray_home, tracking_uri, dataset, tmp_path):
    from orchestrator.registry import versions
    from orchestrator.job.driver import run_job
    from reporters import DirectoryReporter
    from trainers.checkpoints.format import generator_from_checkpoint
    from trainers.generator_metadata import GeneratorMetadata
    from trainers.loop import GanLoop

    storage = tmp_path / "ckpt"
    spec = job_spec("life-finish", dataset, model=TINY_DCGAN, train={"steps": 2, "batch_size": 4},
                    checkpoint={"every_steps": 2, "storage": str(storage)})
    reporter = DirectoryReporter(storage / "life-finish")
    GanLoop(spec).run(reporter)  # a real last-step checkpoint, as the workers write it
    ckpt = str(reporter.checkpoints[-1])
    c = tracking_server.client(tracking_uri)
    life = Lifecycle(c, spec.name, runs.create_run(c, spec.to_dict(), spec.digest(), str(storage / spec.name)),
                     S.CREATED)
    life.move(S.STARTING)
    life.move(S.RUNNING)
    c.set_tag(life.run_id, runs.CHECKPOINT_TAG, ckpt)  # what the controller callback records
    c.set_tag(life.run_id, runs.CHECKPOINT_STEP_TAG, "2")
    g, info = generator_from_checkpoint(ckpt)
    first = versions.register_generator(c, life.run_id, spec.model_name, g, GeneratorMetadata.from_checkpoint_info(info),
                                        spec.digest(), ckpt)
    # ... and the driver died here, before the summary. The rerun (through the CLI, which sets Ray's token
    # up before Ray is imported) finishes without training:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec.to_dict()))
    summary = json.loads(ganray(ganray_home, "run", str(spec_file), "--quiet").stdout)
    assert summary["state"] == "finished" and summary["version"] == first == 1 and summary["steps"] == 2
    assert len(c.search_model_versions(f"name='{spec.model_name}'")) == 1
    assert _states(c, life) == ("finished", "finished")
    seen = status_elsewhere(tracking_uri, spec.name)
    assert (seen["state"], seen["checkpoint"]) == ("finished", ckpt)
    assert run_job(spec, progress=False) == summary  # a finished job gives its summary again, with no cluster


def test_a_runs_stored_spec_is_read_from_its_clients_server_only(stack, tracking_uri, tmp_path, monkeypatch):
    """The refusal of a changed spec compares against the run's spec.json, read through the client the driver
    holds: never MLflow's process-wide default (a sqlite mlflow.db in the working directory)."""
    c = tracking_server.client(tracking_uri)
    spec = job_spec("life-stored-spec", "/nonexistent/data", train={"steps": 7})
    run_id = runs.create_run(c, spec.to_dict(), spec.digest(), "/tmp/unused-storage/life-stored-spec")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert runs.stored_spec(c, c.get_run(run_id)) == spec.to_dict()
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/
