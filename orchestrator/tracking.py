"""MLflow: one run per job (found by the job name), its metrics, and the registry.

Workers never call MLflow. Metrics reach the run through ``MlflowReportCallback``,
which Ray Train runs on its controller once per report; the driver registers
the generator. A run is found again by the tag ``ganray.job``.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.train.v2.api.callback import UserCallback

EXPERIMENT = "ganray"
JOB_TAG, DIGEST_TAG, STATE_TAG, SUMMARY_TAG = "ganray.job", "ganray.spec_digest", "ganray.state", "ganray.summary"
CHECKPOINT_TAG = "ganray.checkpoint_uri"
log = logging.getLogger("ganray.tracking")


class TrackingError(RuntimeError):
    """MLflow cannot be reached or refuses what we ask."""


def client(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise TrackingError("no MLflow server: start the local stack (`ganray local up`) or set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c: MlflowClient) -> str:
    exp = c.get_experiment_by_name(EXPERIMENT)
    return exp.experiment_id if exp else c.create_experiment(EXPERIMENT)


def find_run(c: MlflowClient, job: str):
    """The live MLflow run of job name, or None."""
    runs = c.search_runs([experiment_id(c)], filter_string=f"tags.`{JOB_TAG}` = '{job}'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def list_runs(c: MlflowClient) -> list:
    return c.search_runs([experiment_id(c)], filter_string=f"tags.`{JOB_TAG}` != ''", max_results=1000)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def create_run(c: MlflowClient, spec_dict: dict[str, Any], digest: str) -> str:
    """Opens the job's run: tags identify it, params hold the spec (no endpoints, no secrets)."""
    name = spec_dict["name"]
    run = c.create_run(experiment_id(c), run_name=name,
                       tags={JOB_TAG: name, DIGEST_TAG: digest, STATE_TAG: "created", "ganray.code_revision": code_revision()})
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in flatten(spec_dict).items()]
    for i in range(0, len(params), 100):
        c.log_batch(run.info.run_id, params=params[i:i + 100])
    c.log_text(run.info.run_id, json.dumps(spec_dict, indent=2), "spec.json")
    return run.info.run_id


def supersede(c: MlflowClient, run) -> None:
    """Retires a job's run (for --fresh): it keeps its history but is no longer found by name."""
    c.set_tag(run.info.run_id, JOB_TAG, f"{run.data.tags[JOB_TAG]}#superseded-{int(time.time())}")
    c.set_tag(run.info.run_id, STATE_TAG, "superseded")
    if run.info.status == "RUNNING":
        c.set_terminated(run.info.run_id, "KILLED")


def code_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import version

    return f"ganray-{version('ganray')}"


def checkpoint_uri(storage_url: str, checkpoint_path: str) -> str:
    """A URL for a checkpoint path inside the storage filesystem."""
    if "://" in storage_url:
        scheme = storage_url.split("://", 1)[0]
        return f"{scheme}://{checkpoint_path.lstrip('/')}"
    return checkpoint_path


class MlflowReportCallback(UserCallback):
    """Runs on Ray Train's controller: logs rank 0's metrics and each checkpoint to the job's run.

    A report that cannot reach MLflow is kept and sent with the next one, so a
    server that goes away for a while loses nothing and never stops training.
    """

    def __init__(self, tracking_uri: str, run_id: str, storage_url: str):
        self.tracking_uri, self.run_id, self.storage_url = tracking_uri, run_id, storage_url
        self._pending: list[Metric] = []
        self._pending_tags: dict[str, str] = {}
        self._timeline = None
        self._timeline_dirty = False

    def _load_timeline(self):
        from orchestrator.timeline import Timeline

        last_step, events = 0, []
        try:
            c = MlflowClient(self.tracking_uri)
            last_step = int(c.get_run(self.run_id).data.metrics.get("step", 0))
            import mlflow.artifacts

            events = json.loads(mlflow.artifacts.load_text(f"runs:/{self.run_id}/preemptions.json"))
        except Exception:  # noqa: BLE001 - a new run has neither
            pass
        return Timeline(last_step, events)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0] if metrics else {}
        step, ts = int(m.get("step", 0)), int(time.time() * 1000)
        if self._timeline is None:
            self._timeline = self._load_timeline()
        if self._timeline.observe(m, time.time()) is not None:
            self._timeline_dirty = True
            self._pending += [Metric(k, float(v), ts, step) for k, v in self._timeline.counts().items()]
        self._pending += [Metric(k, float(v), ts, step) for k, v in m.items()
                          if isinstance(v, (int, float))]
        grid = None
        if checkpoint is not None:
            self._pending_tags[CHECKPOINT_TAG] = checkpoint_uri(self.storage_url, checkpoint.path)
            self._pending_tags["ganray.checkpoint_step"] = str(step)
            grid = self._fetch_grid(checkpoint)
        self._pending_tags[STATE_TAG] = "running"
        try:
            c = MlflowClient(self.tracking_uri)
            for i in range(0, len(self._pending), 500):
                c.log_batch(self.run_id, metrics=self._pending[i:i + 500])
            self._pending = []
            for k, v in self._pending_tags.items():
                c.set_tag(self.run_id, k, v)
            self._pending_tags = {}
            if grid:
                c.log_artifact(self.run_id, grid, "samples")
            if self._timeline_dirty:
                c.log_text(self.run_id, json.dumps(self._timeline.events, indent=2), "preemptions.json")
                self._timeline_dirty = False
        except Exception as err:  # noqa: BLE001 - keep training; retry with the next report
            log.warning("MLflow unreachable, keeping %d metrics for later: %s", len(self._pending), type(err).__name__)

    def _fetch_grid(self, checkpoint) -> str | None:
        try:
            d = tempfile.mkdtemp(prefix="ganray-grid-")
            step = checkpoint.path.rstrip("/").rsplit("_", 1)[-1]
            local = os.path.join(d, f"step_{step}.png")
            with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/grid.png") as src, open(local, "wb") as dst:
                dst.write(src.read())
            return local
        except Exception:  # noqa: BLE001 - a grid is nice to have, never a reason to fail
            return None


def register_generator(c: MlflowClient, run_id: str, model_name: str, generator, info: dict[str, Any],
                       digest: str) -> int:
    """Logs the generator to the run and registers it as a version of model_name; returns the version.

    The logged model takes one input, ``[z | c]`` (N, z_dim + c_dim): c is the multi-hot tag
    vector in the order of the vocabulary kept in the metadata (``tags``), absent for an
    unconditional model. The latest evaluation (FID/KID/tag accuracy and the settings they
    were measured with) goes into the metadata and the version's tags.
    """
    import mlflow
    import numpy as np
    import torch

    from trainers.networks import PackedInputGenerator

    config = info["generator_config"]
    c_dim = int(config.get("c_dim") or 0)
    evaluation = {k: v for k, v in (info.get("evaluation") or {}).items()
                  if isinstance(v, (int, float, str)) and not (isinstance(v, float) and v != v)}
    metadata = {"generator_config": config, "tags": info.get("tags", []),
                "conditioning": info.get("conditioning", "tags" if c_dim else "none"), "c_dim": c_dim,
                "input": "z|c" if c_dim else "z", "step": info.get("step"), "dataset_hash": info.get("dataset_hash"),
                "evaluation": evaluation}
    # pt2 (torch.export) format; a batch of 2 keeps the batch dimension dynamic (1 would be specialised).
    example = np.zeros((2, config["z_dim"] + c_dim), dtype=np.float32)
    mlflow.set_tracking_uri(c.tracking_uri)
    mlflow.set_registry_uri(c.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        model_info = mlflow.pytorch.log_model(
            PackedInputGenerator(generator).eval(), name="generator", input_example=example,
            metadata={"ganray": metadata}, serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "ganray"])
    version_tags = {"step": str(info.get("step")), "dataset_hash": str(info.get("dataset_hash")),
                    "spec_digest": digest, "code_revision": code_revision(), "run_id": run_id,
                    "arch": str(config.get("arch")), "conditioning": metadata["conditioning"]}
    version_tags.update({f"metric.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v))[:5000]
                         for k, v in evaluation.items() if "." not in k})
    mv = mlflow.register_model(model_info.model_uri, model_name, tags=version_tags)
    c.set_tag(run_id, STATE_TAG, "running")  # start_run's exit marked the run finished; the driver decides
    return int(mv.version)
