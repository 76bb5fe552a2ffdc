"""The job driver: validate, open (or find) the MLflow run, run Ray Train, register.

One driver per job name. The same name resumes from its latest checkpoint (Ray
Train restores from the run's storage folder); a finished job prints its stored
summary; a changed spec is refused unless ``fresh``.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from orchestrator import jobs, tracking
from orchestrator.environment import Endpoints, use_cluster_environment
from orchestrator.spec import JobSpec
from trainers.checkpoint import generator_from_checkpoint
from trainers.data.storage import open_filesystem
from trainers.data.stream import read_manifest

NAMESPACE = "ganray"


class JobError(RuntimeError):
    """The job cannot run, or ran and failed; the message says why."""


@dataclass
class Storage:
    url: str  # what users see: s3://bucket/prefix or a local path
    path: str  # what Ray Train gets as storage_path
    filesystem: Any  # pyarrow filesystem or None for local paths

    def run_url(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"


def resolve_storage(spec: JobSpec, env: Endpoints) -> Storage:
    url = spec.checkpoint.storage or (f"{env.storage_root.rstrip('/')}/checkpoints" if env.storage_root else None)
    if not url:
        raise JobError("checkpoint.storage is not set and there is no local stack to default to "
                       "(`ganray local up`, or set checkpoint.storage)")
    parsed = urlparse(url)
    if parsed.scheme in ("s3", "s3a"):
        import pyarrow.fs as pafs

        kwargs: dict[str, Any] = {"region": "us-east-1"}
        if env.s3_endpoint:
            ep = urlparse(env.s3_endpoint)
            kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
        return Storage(url, f"{parsed.netloc}{parsed.path}".rstrip("/"), pafs.S3FileSystem(**kwargs))
    if parsed.scheme in ("", "file"):
        return Storage(url, parsed.path if parsed.scheme else url, None)
    import pyarrow.fs as pafs

    fs, path = open_filesystem(url)
    return Storage(url, path, pafs.PyFileSystem(pafs.FSSpecHandler(fs)))


def delete_run_storage(storage: Storage, name: str) -> None:
    fs, path = open_filesystem(storage.run_url(name))
    if fs.exists(path):
        fs.rm(path, recursive=True)


class Progress:
    """A live progress line on stderr, read from the job's MLflow run every few seconds."""

    def __init__(self, c, run_id: str, name: str, total: int, enabled: bool = True):
        self.c, self.run_id, self.name, self.total, self.enabled = c, run_id, name, total, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tty = sys.stderr.isatty()
        self._last_print = 0.0
        self.last_step = 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        if self.enabled and self._tty:
            sys.stderr.write("\n")

    def _loop(self) -> None:
        while not self._stop.wait(2.0):
            try:
                m = self.c.get_run(self.run_id).data.metrics
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            if "total_steps" not in m:
                continue
            step = int(m.get("step", 0))
            self.last_step = step
            jobs.write_record(self.name, step=step, state="running", preemptions=int(m.get("preemptions", 0)),
                              failures=int(m.get("failures", 0)), steps_lost=int(m.get("steps_lost_total", 0)))
            if not self.enabled:
                continue
            ips = m.get("img_per_sec", 0.0)
            left = (self.total - step) * (m.get("images_seen", 0) / max(step, 1)) / max(ips, 1e-9)
            line = (f"{self.name}: step {step}/{self.total} | {ips:,.0f} img/s | loss_d {m.get('loss_d', 0):.3f} "
                    f"loss_g {m.get('loss_g', 0):.3f} | data wait {m.get('data_wait_frac', 0):.0%} | "
                    f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}")
            if self._tty:
                sys.stderr.write("\r\033[K" + line)
                sys.stderr.flush()
            elif time.monotonic() - self._last_print > 10:
                sys.stderr.write(line + "\n")
                self._last_print = time.monotonic()


def _ray_init(env: Endpoints) -> None:
    import ray

    if ray.is_initialized():
        return
    if not env.ray_address:
        raise JobError("no Ray cluster: start the local stack (`ganray local up`) or set RAY_ADDRESS")
    try:
        ray.init(address=env.ray_address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level="WARNING", configure_logging=True)
    except Exception as err:  # noqa: BLE001
        raise JobError(f"cannot connect to the Ray cluster at {env.ray_address}: {type(err).__name__}: {err}") from None


def _control_actor(name: str):
    import ray

    @ray.remote(num_cpus=0)
    class JobControl:
        def __init__(self):
            self.stop = False

        def request_stop(self) -> None:
            self.stop = True

        def stop_requested(self) -> bool:
            return self.stop

    actor_name = f"control-{name}"
    try:
        ray.kill(ray.get_actor(actor_name, namespace=NAMESPACE))
    except ValueError:
        pass
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node, which is not a spot node that may vanish.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return actor_name, JobControl.options(name=actor_name, namespace=NAMESPACE, scheduling_strategy=here).remote()


def _fit_in_thread(trainer):
    """trainer.fit() on a helper thread, so that Ctrl-C reaches our handler (a checkpoint, then a
    clean stop) instead of Ray's, which aborts the run without one."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised on the main thread
            box["error"] = err

    t = threading.Thread(target=target, name="ganray-fit", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]


def summary_from_run(run) -> dict[str, Any] | None:
    raw = run.data.tags.get(tracking.SUMMARY_TAG)
    return json.loads(raw) if raw else None


def run_job(spec: JobSpec, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes) the job; returns its summary. Raises JobError with the reason."""
    env = use_cluster_environment()
    with jobs.JobLock(spec.name):
        c = tracking.client(env.mlflow_uri)
        storage = resolve_storage(spec, env)
        try:
            run = tracking.find_run(c, spec.name)
        except Exception as err:  # noqa: BLE001
            raise JobError(f"cannot reach MLflow at {env.mlflow_uri}: {type(err).__name__}: {err}") from None
        if run is not None and fresh:
            tracking.supersede(c, run)
            delete_run_storage(storage, spec.name)
            run = None
        if run is not None:
            if run.data.tags.get(tracking.DIGEST_TAG) != spec.digest():
                raise JobError(_spec_diff_message(c, run, spec))
            done = summary_from_run(run)
            if run.data.tags.get(tracking.STATE_TAG) == "finished" and done:
                return done
            run_id = run.info.run_id
        else:
            read_manifest(spec.data.url)  # a missing dataset fails here, before any cluster work
            run_id = tracking.create_run(c, spec.to_dict(), spec.digest())
        jobs.write_record(spec.name, state="starting", run_id=run_id, storage=storage.run_url(spec.name),
                          total_steps=spec.train.steps)
        return _fit_and_register(spec, env, c, run_id, storage, progress)


def _spec_diff_message(c, run, spec: JobSpec) -> str:
    try:
        import mlflow

        stored = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/spec.json"))
        old, new = tracking.flatten(stored), tracking.flatten(spec.to_dict())
        fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in fields[:8])
    except Exception:  # noqa: BLE001
        detail = "stored spec unavailable"
    return (f"job {spec.name!r} already exists with a different spec ({detail}); "
            f"run it with --fresh to start the name over")


def _fit_and_register(spec: JobSpec, env: Endpoints, c, run_id: str, storage: Storage,
                      progress: bool) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.ray_worker import train_worker

    _ray_init(env)
    actor_name, control = _control_actor(spec.name)
    gpus = spec.scaling.gpus_per_worker
    resources = {"CPU": spec.scaling.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec.to_dict(), "control": {"name": actor_name, "namespace": NAMESPACE}},
        scaling_config=ScalingConfig(num_workers=spec.scaling.workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=spec.name, storage_path=storage.path, storage_filesystem=storage.filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            failure_config=FailureConfig(max_failures=spec.preemption.max_failures,
                                         max_preemption_failures=spec.preemption.max_preemptions),
            callbacks=[tracking.MlflowReportCallback(env.mlflow_uri, run_id, storage.url)],
        ),
    )
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        sys.stderr.write("\nganray: stopping: writing a checkpoint (Ctrl-C again to abort without one)\n")
        control.request_stop.remote()

    previous = signal.signal(signal.SIGINT, on_sigint)
    jobs.write_record(spec.name, state="running")
    try:
        with Progress(c, run_id, spec.name, spec.train.steps, enabled=progress):
            result = _fit_in_thread(trainer)
    except KeyboardInterrupt:
        jobs.write_record(spec.name, state="interrupted")
        raise JobError(f"job {spec.name!r} aborted; run it again to resume from its last checkpoint") from None
    except Exception as err:  # noqa: BLE001 - Ray wraps worker errors in its own types
        jobs.write_record(spec.name, state="failed", error=str(err)[:2000])
        c.set_tag(run_id, tracking.STATE_TAG, "failed")
        raise JobError(f"job {spec.name!r} failed: {err}") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.error is not None:
        jobs.write_record(spec.name, state="failed", error=str(result.error)[:2000])
        c.set_tag(run_id, tracking.STATE_TAG, "failed")
        raise JobError(f"job {spec.name!r} failed: {result.error}")
    if result.checkpoint is None:
        raise JobError(f"job {spec.name!r} ended without a checkpoint")
    ckpt_uri = tracking.checkpoint_uri(storage.url, result.checkpoint.path)
    with result.checkpoint.as_directory() as d:
        generator, info = generator_from_checkpoint(d)
        from trainers.checkpoint import load_state

        state = load_state(d)
    summary: dict[str, Any] = {
        "run_id": run_id, "steps": int(state["step"]), "checkpoint_uri": ckpt_uri,
        "images_per_sec": float(state["images_seen"] / max(state["train_seconds"], 1e-9)),
    }
    if state["step"] < spec.train.steps:
        jobs.write_record(spec.name, state="stopped", step=summary["steps"], checkpoint=ckpt_uri)
        c.set_tag(run_id, tracking.STATE_TAG, "stopped")
        return {**summary, "state": "stopped"}
    version = None
    if spec.registry.register != "none":
        version = tracking.register_generator(c, run_id, spec.model_name, generator, info, spec.digest())
    summary = {
        "run_id": run_id,
        "registered_model": spec.model_name if version else None,
        "version": version,
        "model_uri": f"models:/{spec.model_name}/{version}" if version else None,
        "checkpoint_uri": ckpt_uri,
        "steps": summary["steps"],
        "images_per_sec": round(summary["images_per_sec"], 3),
        "state": "finished",
    }
    c.set_tag(run_id, tracking.SUMMARY_TAG, json.dumps(summary))
    c.set_tag(run_id, tracking.STATE_TAG, "finished")
    c.log_text(run_id, json.dumps(summary, indent=2), "summary.json")
    c.set_terminated(run_id, "FINISHED")
    jobs.write_record(spec.name, state="finished", step=summary["steps"], checkpoint=ckpt_uri, summary=summary)
    return summary
