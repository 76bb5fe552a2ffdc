"""One driver per job name on a Ray cluster, whichever host it runs on.

The lock is a named actor ``lock-<job>`` in the ``ganray`` namespace, created by the driver
that runs the job and owned by its Ray job. Ray registers a name once (a second creation fails
in the GCS), so two drivers cannot both hold it; the actor records its holder (host, pid,
submission id, Ray job id) for the refusal message. It is not detached: Ray destroys it when
its driver ends, however it ends (a killed driver too, within about a second). A holder whose
Ray job the GCS records as dead is stale, and is removed. The per-host file lock
(``jobs.JobLock``) stays: it is taken first, without a cluster.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Iterator

from orchestrator.job.host_record import JobBusyError
from orchestrator.job.ray_runtime import NAMESPACE, own_job_id, own_submission_id, ray_init

RELEASE_WAIT_S = 30.0  # how long a holder that is going away (its driver ended) is waited for


def actor_name(job: str) -> str:
    return f"lock-{job}"


def describe(holder: dict[str, Any]) -> str:
    """A holder as a refusal names it: submission (when submitted), host, pid and Ray job."""
    where = f"pid {holder.get('pid')} on host {holder.get('host')}, Ray job {holder.get('job_id')}"
    sub = holder.get("submission_id")
    return f"submission {sub} ({where})" if sub else f"a driver ({where})"


def busy(job: str, holder: dict[str, Any]) -> JobBusyError:
    return JobBusyError(f"job {job!r} is already being run on this cluster by {describe(holder)}; "
                        f"stop it first (`ganray stop {job}`) or wait for it to end")


@contextlib.contextmanager
def held(job: str, ray_address: str | None) -> Iterator[dict[str, Any]]:
    """Connects to the cluster and holds the job's lock for the block; JobBusyError naming the holder
    when another live driver holds it."""
    ray_init(ray_address)
    actor, me = acquire(job)
    try:
        yield me
    finally:
        release(actor)


def _lock_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class JobLockActor:
        def __init__(self, holder: dict[str, Any]):
            self._holder = holder

        def holder(self) -> dict[str, Any]:
            return self._holder

    return JobLockActor


def acquire(job: str) -> tuple[Any, dict[str, Any]]:
    """(actor, holder) once this driver holds the job's lock."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    me = {"host": socket.gethostname(), "pid": os.getpid(), "submission_id": own_submission_id(),
          "job_id": own_job_id()}
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    cls, deadline = _lock_class(), time.monotonic() + RELEASE_WAIT_S
    while True:
        try:
            actor = cls.options(name=actor_name(job), namespace=NAMESPACE, scheduling_strategy=here).remote(me)
        except ray.exceptions.ActorAlreadyExistsError:
            holder = current_holder(job)
            if holder is not None:
                raise busy(job, holder) from None
            if time.monotonic() > deadline:
                raise JobBusyError(f"job {job!r}: the cluster lock of a driver that ended was not released "
                                   f"in {RELEASE_WAIT_S:.0f} s; try again") from None
            time.sleep(0.5)
            continue
        ray.get(actor.holder.remote())  # registered and running: ours
        return actor, me


def current_holder(job: str) -> dict[str, Any] | None:
    """The live holder of the job's lock, or None when there is none or it is going away (its actor is
    dying, or its driver's Ray job is dead: such a stale lock is removed here)."""
    import ray

    try:
        actor = ray.get_actor(actor_name(job), namespace=NAMESPACE)
        holder = ray.get(actor.holder.remote(), timeout=30)
    except (ValueError, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    if _job_alive(holder.get("job_id")):
        return holder
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    return None


def _job_alive(job_id: str | None) -> bool:
    """Whether the GCS job table records job_id as alive (an unknown or unreadable table: alive)."""
    if not job_id:
        return True
    try:
        from ray._private.state import jobs

        table = {j["JobID"]: j for j in jobs()}
    except Exception:  # noqa: BLE001 - no table: assume the holder lives (refusing is the safe side)
        return True
    entry = table.get(job_id)
    return entry is None or not entry.get("IsDead", False)


def release(actor) -> None:
    """Gives the lock up (Ray would when this driver ends; a library caller may go on)."""
    import ray

    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
