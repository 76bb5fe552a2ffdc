"""MLflow runs: one per job, found again by the job's name; its spec, tags and summary.

Workers never call MLflow. This module is the driver's and the CLI's view of a run;
``report_callback`` logs the training reports into it, ``registry`` registers its
generators, ``lifecycle`` moves its state. It imports no Ray.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from orchestrator.tracking_server import TrackingError

EXPERIMENT = "ganray"
JOB_TAG = "ganray.job"
DIGEST_TAG = "ganray.spec_digest"
STATE_TAG = "ganray.state"
SUMMARY_TAG = "ganray.summary"
CHECKPOINT_TAG = "ganray.checkpoint_uri"
CHECKPOINT_STEP_TAG = "ganray.checkpoint_step"
STORAGE_TAG = "ganray.storage"
REVISION_TAG = "ganray.code_revision"
SPEC_ARTIFACT = "spec.json"


def experiment_id(client: MlflowClient) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    return exp.experiment_id if exp else client.create_experiment(EXPERIMENT)


def find_run(client: MlflowClient, job: str):
    """The live MLflow run of a job name, or None; TrackingError when the server cannot be asked."""
    try:
        runs = client.search_runs([experiment_id(client)], filter_string=f"tags.`{JOB_TAG}` = '{job}'",
                             order_by=["attributes.start_time DESC"], max_results=1)
    except Exception as err:  # noqa: BLE001 - connection errors come in several types
        raise TrackingError(f"cannot reach MLflow at {client.tracking_uri}: {type(err).__name__}: {err}") from None
    return runs[0] if runs else None


def list_runs(client: MlflowClient) -> list:
    """The live runs of every job (superseded runs are left out), newest first."""
    try:
        runs = client.search_runs([experiment_id(client)], filter_string=f"tags.`{JOB_TAG}` != ''", max_results=1000,
                             order_by=["attributes.start_time DESC"])
    except Exception as err:  # noqa: BLE001
        raise TrackingError(f"cannot reach MLflow at {client.tracking_uri}: {type(err).__name__}: {err}") from None
    return [r for r in runs if "#" not in r.data.tags.get(JOB_TAG, "#")]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested dict as dotted keys with string values (lists as JSON), as MLflow params hold it."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def create_run(client: MlflowClient, spec_dict: dict[str, Any], digest: str, storage_url: str,
               extra_params: dict[str, str] | None = None) -> str:
    """Opens the job's run in state ``created``: tags identify it, params hold the spec (no endpoints,
    no secrets) and extra_params (a fine-tune's source), ``spec.json`` the whole spec, and the storage
    tag where its checkpoints go."""
    name = spec_dict["name"]
    run = client.create_run(experiment_id(client), run_name=name,
                       tags={JOB_TAG: name, DIGEST_TAG: digest, STATE_TAG: "created",
                             REVISION_TAG: code_revision(), STORAGE_TAG: storage_url})
    params = [Param(k, v[:6000]) for k, v in {**flatten(spec_dict), **(extra_params or {})}.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    client.log_text(run.info.run_id, json.dumps(spec_dict, indent=2), SPEC_ARTIFACT)
    return run.info.run_id


def stored_spec(client: MlflowClient, run) -> dict[str, Any] | None:
    """The spec a run was created with (its spec.json, read from client's tracking server), or None when it
    cannot be read. Never MLflow's process-wide default server (a sqlite file in the working directory)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="ganray-spec-") as tmp:
            return json.loads(Path(client.download_artifacts(run.info.run_id, SPEC_ARTIFACT, tmp)).read_text())
    except Exception:  # noqa: BLE001 - a run without the artifact, or a server that went away
        return None


def retire(client: MlflowClient, run) -> None:
    """Renames a job's run (for --fresh): it keeps its history but is no longer found by the job's name."""
    client.set_tag(run.info.run_id, JOB_TAG, f"{run.data.tags[JOB_TAG]}#superseded-{int(time.time())}")


def summary_of(run) -> dict[str, Any] | None:
    """The summary a finished run stored, or None."""
    raw = run.data.tags.get(SUMMARY_TAG)
    return json.loads(raw) if raw else None


def write_summary(client: MlflowClient, run_id: str, summary: dict[str, Any]) -> None:
    """Stores the summary as a tag (what a rerun prints) and as summary.json."""
    client.set_tag(run_id, SUMMARY_TAG, json.dumps(summary))
    client.log_text(run_id, json.dumps(summary, indent=2), "summary.json")


def code_revision() -> str:
    """The git revision of the code running, or the package version outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    from importlib.metadata import version

    return f"ganray-{version('ganray')}"
