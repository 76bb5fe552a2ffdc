"""The job driver: validate, open (or find) the job's MLflow run, run Ray Train, register, finish.

One driver per job name: per host (``jobs.JobLock``) and per Ray cluster, whichever host
(``cluster_lock``). The same name resumes from its latest checkpoint (Ray Train
restores from the run's storage folder); a finished job returns its stored summary; a
changed spec is refused unless ``fresh``. Every change of the job's state goes through
``lifecycle.Lifecycle.move``; finishing is idempotent (a rerun after a driver died
between registering and storing the summary registers nothing twice).
"""
from __future__ import annotations

from typing import Any

from orchestrator import tracking_server

from orchestrator.job import cluster_lock

from orchestrator.job import host_record

from orchestrator.job import init_source

from orchestrator.job import runs
from orchestrator.cluster.endpoints import Endpoints, applied, resolve_endpoints
from orchestrator.job.lifecycle import Lifecycle, State, state_of
from orchestrator.job.progress import Progress
from orchestrator.registry.registrar import Registrar, register_finished
from orchestrator.tracking_server import patiently
from orchestrator.job.stop_channel import DriverStop, StopWatcher
from trainers.checkpoints.copies import local_copy
from trainers.checkpoints.deletion import delete_job_checkpoints
from trainers.checkpoints.format import generator_from_checkpoint, load_state
from trainers.checkpoints.storage import Storage, checkpoint_uri, open_storage, resolve_storage
from trainers.checkpoints.stored_spec import newest_spec
from trainers.data.stream.shard_stream import read_manifest
from trainers.errors import GanrayError
from trainers.spec import JobSpec, same_spec, spec_difference


class JobError(GanrayError, RuntimeError):
    """The job cannot run, or ran and failed; the message says why."""


def run_job(spec: JobSpec, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes) the job and returns its summary; raises a GanrayError with the reason.

    The caller's os.environ is left as it was.
    """
    endpoints = resolve_endpoints()
    with applied(endpoints), host_record.JobLock(spec.name):
        client = tracking_server.client(endpoints.mlflow_uri)
        answer = None if fresh else _answer_without_running(client, spec)
        if answer is not None:
            return answer
        with cluster_lock.held(spec.name, endpoints.ray_address):
            return _run_locked(spec, fresh, progress, endpoints, client)


def _answer_without_running(client, spec: JobSpec) -> dict[str, Any] | None:
    """What needs no cluster: a finished job's stored summary, or the refusal of a changed spec
    (JobError). None when the job has to run."""
    run = runs.find_run(client, spec.name)
    if run is None:
        return None
    _check_same_spec(client, run, spec)
    return runs.summary_of(run) if state_of(run) is State.FINISHED else None


def _run_locked(spec: JobSpec, fresh: bool, progress: bool, endpoints: Endpoints, client) -> dict[str, Any]:
    """The job's run, under the cluster-wide lock of its name: opened, trained, finished."""
    storage = resolve_storage(spec.checkpoint.storage, endpoints.storage_root, endpoints.s3_endpoint)
    run, life = _open_job(client, spec, storage, fresh)
    if life is None:
        return runs.summary_of(run)
    try:
        life.move(State.STARTING, storage=storage.run_url(spec.name), total_steps=spec.train.steps)
        ckpt = _final_checkpoint(run, spec)
        if ckpt:  # trained to the end already: only the finishing is left
            life.move(State.RUNNING)
        else:
            ckpt = _train(spec, endpoints, client, life, storage, progress, init_source.recorded_checkpoint(run))
        return finish(spec, client, life, ckpt)
    except KeyboardInterrupt:  # Ctrl-C before training began, or a second one during it
        life.move(State.INTERRUPTED)
        raise JobError(f"job {spec.name!r} aborted; run it again to resume from its last checkpoint") from None


def _open_job(client, spec: JobSpec, storage: Storage, fresh: bool):
    """(run, lifecycle) of the job; lifecycle None when the run is finished (its summary is the answer).

    fresh: the old run is superseded, the checkpoints it recorded and the job's checkpoints where this
    spec writes are deleted, and a new run starts at step 0. Without fresh and without a run on record,
    checkpoints of the job in its storage folder must have been written under the same spec."""
    run = runs.find_run(client, spec.name)
    run_url = storage.run_url(spec.name)
    lineage = {}
    if fresh or run is None:  # a missing dataset or an unusable init_from fails here, before anything changes
        lineage = init_source.resolve(client, spec, read_manifest(spec.data.url).resolution)
    if fresh:
        if run is not None:
            _retire(client, run)
        _delete_checkpoints(run_url)  # whatever the tracking server remembers, Ray Train restores nothing
        run = None
    elif run is None:
        _check_stored_checkpoints(run_url, spec)
    if run is None:
        run_id = runs.create_run(client, spec.to_dict(), spec.digest(), run_url, lineage)
        return client.get_run(run_id), Lifecycle(client, spec.name, run_id, State.CREATED)
    _check_same_spec(client, run, spec)
    state = state_of(run)
    if state is State.FINISHED and runs.summary_of(run):
        return run, None
    return run, Lifecycle(client, spec.name, run.info.run_id, state)


def _retire(client, run) -> None:
    """--fresh: the old run is superseded and the checkpoints it wrote (under the storage folder it
    recorded, wherever the new spec points) are deleted; nothing else there."""
    Lifecycle(client, run.data.tags[runs.JOB_TAG], run.info.run_id, state_of(run)).move(State.SUPERSEDED)
    runs.retire(client, run)
    recorded = run.data.tags.get(runs.STORAGE_TAG)
    if recorded:
        _delete_checkpoints(recorded)


def _delete_checkpoints(run_url: str) -> None:
    """The job's checkpoint folders under run_url and Ray Train's record of them, gone (JobError if not)."""
    try:
        delete_job_checkpoints(*open_storage(run_url))
    except OSError as err:
        raise JobError(f"cannot delete the checkpoints in {run_url} (--fresh): {type(err).__name__}: {err}") from None


def _check_stored_checkpoints(run_url: str, spec: JobSpec) -> None:
    """With no run on record: the newest checkpoint of the job in its storage folder must have been written
    under the same spec (JobError naming the fields otherwise). One whose spec cannot be read is left to the
    workers, which verify every checkpoint and compare its spec again."""
    try:
        found = newest_spec(*open_storage(run_url))
    except OSError as err:
        raise JobError(f"cannot read the checkpoints in {run_url}: {type(err).__name__}: {err}") from None
    if found is None or found[1] is None or same_spec(found[1], spec):
        return
    raise JobError(f"{found[0]}: {_spec_diff_message(found[1], spec)}")


def _check_same_spec(client, run, spec: JobSpec) -> None:
    if run.data.tags.get(runs.DIGEST_TAG) == spec.digest():
        return
    stored = runs.stored_spec(client, run)
    if stored is not None and same_spec(stored, spec):  # recorded under an older digest rule
        client.set_tag(run.info.run_id, runs.DIGEST_TAG, spec.digest())
        return
    raise JobError(_spec_diff_message(stored, spec))


def _spec_diff_message(stored: dict[str, Any] | None, spec: JobSpec) -> str:
    return (f"job {spec.name!r} already exists with a different spec ({spec_difference(stored, spec)}); "
            f"run it with --fresh to start the name over")


def _final_checkpoint(run, spec: JobSpec) -> str | None:
    """The URI of a checkpoint the run recorded at its last step (a driver died while finishing), or None."""
    tags = run.data.tags
    if tags.get(runs.CHECKPOINT_TAG) and tags.get(runs.CHECKPOINT_STEP_TAG) == str(spec.train.steps):
        return tags[runs.CHECKPOINT_TAG]
    return None


def _trainer(spec: JobSpec, endpoints: Endpoints, run_id: str, storage: Storage, control_name: str,
             init_from: str | None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.job.ray_runtime import NAMESPACE
    from orchestrator.controller.report_callback import MlflowReportCallback
    from trainers.ray_worker import train_worker

    gpus = spec.scaling.gpus_per_worker
    resources = {"CPU": spec.scaling.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    return TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec.to_dict(), "control": {"name": control_name, "namespace": NAMESPACE},
                           "init_from": init_from},
        scaling_config=ScalingConfig(num_workers=spec.scaling.workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=spec.name, storage_path=storage.path, storage_filesystem=storage.filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            failure_config=FailureConfig(max_failures=spec.preemption.max_failures,
                                         max_preemption_failures=spec.preemption.max_preemptions),
            callbacks=[MlflowReportCallback(endpoints.mlflow_uri, run_id, storage.url,
                                            keep_evaluated=spec.registry.evaluated)]))


def _train(spec: JobSpec, endpoints: Endpoints, client, life: Lifecycle, storage: Storage, progress: bool,
           init_from: str | None) -> str:
    """Runs Ray Train to the end or a stop; returns the URI of its last checkpoint. init_from: the source
    checkpoint a first start takes G, D and G_ema from (the workers use it only without a checkpoint of
    the job's own)."""
    from orchestrator.job.ray_runtime import control_actor, fit_in_thread, own_job_id, own_submission_id, ray_init

    ray_init(endpoints.ray_address)
    control_name, control = control_actor(spec.name)
    trainer = _trainer(spec, endpoints, life.run_id, storage, control_name, init_from)
    with DriverStop(control) as stop:  # Ctrl-C, SIGTERM, and `ganray stop` through the tracking server
        life.move(State.RUNNING)
        try:
            with Progress(client, life.run_id, spec.name, spec.train.steps, enabled=progress), \
                    Registrar(tracking_server.client(client.tracking_uri), spec, life.run_id), \
                    StopWatcher(client, life.run_id, own_job_id(), own_submission_id(), stop.from_tracking_server):
                result = fit_in_thread(trainer)
        except Exception as err:  # noqa: BLE001 - Ray wraps worker errors in its own types
            result = err
    return outcome(spec.name, life, result, storage.url)


def outcome(name: str, life: Lifecycle, result: Any, storage_url: str) -> str:
    """The checkpoint URI of a fit's result; a fit that raised, reported an error or left no
    checkpoint moves the job to ``failed`` and raises JobError."""
    error = result if isinstance(result, Exception) else result.error
    if error is None and result.checkpoint is None:
        error = "training ended without a checkpoint"
    if error is not None:
        life.move(State.FAILED, error=str(error)[:2000])
        raise JobError(f"job {name!r} failed: {error}")
    return checkpoint_uri(storage_url, result.checkpoint.path)


def finish(spec: JobSpec, client, life: Lifecycle, ckpt_uri: str) -> dict[str, Any]:
    """From the job's last checkpoint: ``stopped`` before the last step; else the generator registered
    (once: a version already registered from this run and checkpoint is reused) and ``finished``."""
    with local_copy(*open_storage(ckpt_uri)) as d:
        generator, info = generator_from_checkpoint(d)
        state = load_state(d)
    steps = int(state["step"])
    ips = float(state["images_seen"] / max(state["train_seconds"], 1e-9))
    if steps < spec.train.steps:
        life.move(State.STOPPED, step=steps, checkpoint=ckpt_uri)
        return {"run_id": life.run_id, "steps": steps, "checkpoint_uri": ckpt_uri, "images_per_sec": ips,
                "state": State.STOPPED.value}
    # the tracking server may be away as training ends: wait for it (logged, bounded: retry.patiently)
    version = patiently(lambda: register_finished(client, spec, life.run_id, ckpt_uri, generator, info),
                        "registering the generator")
    summary = {"run_id": life.run_id, "registered_model": spec.model_name if version else None, "version": version,
               "model_uri": f"models:/{spec.model_name}/{version}" if version else None,
               "checkpoint_uri": ckpt_uri, "steps": steps, "images_per_sec": round(ips, 3),
               "state": State.FINISHED.value}
    patiently(lambda: runs.write_summary(client, life.run_id, summary), "storing the summary")
    life.move(State.FINISHED, step=steps, checkpoint=ckpt_uri, summary=summary)
    return summary
