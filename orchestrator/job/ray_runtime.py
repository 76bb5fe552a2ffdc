"""The driver's side of Ray: connect, the job's control actor, and fit() on a thread Ctrl-C cannot reach."""
from __future__ import annotations

import json
import os
import threading
from typing import Any

from orchestrator.cluster.endpoints import ClusterError
from trainers import settings

NAMESPACE = "ganray"
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted driver
# How often the Train controller polls its workers (Ray's default 2 s): it drains reports then (their
# one-slot queue) and notices a finished, failed or preempted group then. Train hands it on from the
# driver's environment; a value set by the user wins.
CONTROLLER_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def ray_init(ray_address: str | None) -> None:
    """Connects to the cluster once per process; the worker-side GANRAY_* variables set here travel to
    every worker in the job's runtime environment (credentials never do). A submitted driver adds
    only those its submission's runtime env does not already set. A Ray token in the environment
    (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) turns token auth on (RAY_AUTH_MODE=token, unless set),
    before Ray is imported: Ray reads these once. The Train controller polls every 0.5 s
    (:data:`CONTROLLER_POLL`) unless the environment says otherwise."""
    os.environ.setdefault(*CONTROLLER_POLL)
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) and \
            not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    if ray.is_initialized():
        return
    if not ray_address:
        raise ClusterError("no Ray cluster: start the local stack (`ganray local up`) or set RAY_ADDRESS")
    if ray_address.startswith(("http://", "https://")):
        raise ClusterError(f"RAY_ADDRESS={ray_address} is a dashboard URL: a driver connects to the cluster's GCS "
                           "(HEAD:6379); send the job through the dashboard with `ganray submit` instead")
    # A submitted job's runtime env already carries the submitter's; Ray refuses the same key twice.
    job_env = submitted_job_config().get("runtime_env", {}).get("env_vars") or {}
    env_vars = {k: v for k, v in settings.worker_env().items() if k not in job_env}
    try:
        ray.init(address=ray_address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING",
                 configure_logging=True, runtime_env={"env_vars": env_vars} if env_vars else None)
    except Exception as err:  # noqa: BLE001
        raise ClusterError(f"cannot connect to the Ray cluster at {ray_address}: {type(err).__name__}: {err}") from None


def submitted_job_config() -> dict[str, Any]:
    """The job config Ray's job supervisor hands a submitted driver ({} for a driver started by hand):
    its runtime env and metadata, which hold the submission id."""
    raw = os.environ.get(JOB_CONFIG_VAR)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def own_submission_id() -> str | None:
    """The Ray Job API submission id this driver runs as, or None when it was not submitted."""
    return (submitted_job_config().get("metadata") or {}).get("job_submission_id") or None


def own_job_id() -> str | None:
    """This driver's Ray job id (hex), once connected."""
    import ray

    return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None


def control_actor(name: str):
    """(actor name, handle) of the job's control actor, through which workers learn of a stop request.

    Only the holder of the job's cluster lock (``cluster_lock.py``) gets here, so one found under
    the name is a dead driver's and is replaced. It lives on the driver's node, which is not a spot
    node that may vanish.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return actor_name, JobControl.options(name=actor_name, namespace=NAMESPACE, scheduling_strategy=here).remote()


def fit_in_thread(trainer) -> Any:
    """trainer.fit() on a helper thread, so that Ctrl-C reaches the driver's handler (a checkpoint, then
    a clean stop) instead of Ray's, which aborts the run without one."""
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
