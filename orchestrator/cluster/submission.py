"""``ganray submit`` and ``ganray stop``: a JobSpec run on a cluster through Ray's Job API, stopped with a checkpoint.

A submission runs ``ganray run ganray-submitted-job.yaml`` on the cluster. Its id is
``<name>-<spec digest>``; a later attempt of the same spec is ``<id>-<n>``. Submitting a spec:

- while a submission of the same name and spec is PENDING or RUNNING, or the last one of that
  spec SUCCEEDED: prints that id, submits nothing;
- after STOPPED or FAILED: submits the next attempt, which resumes from the job's checkpoint
  (``ganray run`` resumes by name);
- a changed spec under a running name (or one the tracking server records for the name) is
  refused unless ``replace``: the running one is stopped with a checkpoint first, then the new
  spec starts the name over (``ganray run --fresh``);
- a name whose cluster lock another driver holds (``cluster_lock``) is refused, naming it.

The runtime env ships the spec (a folder holding only it, or with ``working_dir`` that folder's
entries beside it) and the worker-side ``GANRAY_*`` variables set here (``settings.worker_env``),
nothing else: credentials come from each node's environment and the cluster's secrets.

A checkpointed stop (:func:`stop`) asks the job's driver through the tracking server
(``stop_channel``), waits for the training state ``stopped`` and then has Ray stop the
submission, so that Ray records STOPPED; past the timeout, or with ``now``, Ray stops it at once.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from orchestrator.job import runs

from orchestrator.job import stop_channel
from orchestrator.cluster.endpoints import is_local_stack
from orchestrator.cluster.job_api import TERMINAL, JobApi, Submission
from orchestrator.job.host_record import JobBusyError
from orchestrator.job.lifecycle import State, state_of
from orchestrator.job.spec_file import load_spec
from trainers import settings
from trainers.errors import GanrayError, UsageError
from trainers.spec import JobSpec, same_spec, spec_difference

SPEC_FILE = "ganray-submitted-job.yaml"


class SubmitRefused(GanrayError, RuntimeError):
    """A changed spec under a name that runs or exists, without --replace."""


@dataclass(frozen=True)
class Submitted:
    submission_id: str
    submitted: bool  # False: the id of a submission that was already there
    why: str


def submission_id(spec: JobSpec) -> str:
    return f"{spec.name}-{spec.digest()}"


def _attempts(base: str, subs: list[Submission]) -> list[Submission]:
    """The submissions of one spec: base and base-<n>, oldest first."""
    return [s for s in subs if s.id == base or (s.id.startswith(base + "-") and s.id[len(base) + 1:].isdigit())]


def _next_id(base: str, attempts: list[Submission]) -> str:
    if not attempts:
        return base
    n = max(int(s.id[len(base) + 1:]) if s.id != base else 1 for s in attempts)
    return f"{base}-{n + 1}"


def submit(api: JobApi, spec: JobSpec, client=None, replace: bool = False, working_dir: str | None = None,
           timeout: float = 120.0, say: Callable[[str], None] = lambda _: None) -> Submitted:
    """Submits spec unless that job is already pending, running or done (see the module doc)."""
    base, subs = submission_id(spec), api.submissions(spec.name)
    running = [s for s in subs if s.active]
    for s in running:
        if s.digest == spec.digest():
            return Submitted(s.id, False, f"already {s.status}")
    if running:
        if not replace:
            raise SubmitRefused(f"job {spec.name!r} is {running[-1].status} on the cluster with another spec "
                                f"(submission {running[-1].id}); --replace stops it with a checkpoint and "
                                f"starts the name over with this spec")
        say(f"replacing submission {running[-1].id}: stopping it with a checkpoint")
        stop(api, client, spec.name, running[-1], timeout, say=say)
        fresh = True
    else:
        holder = api.lock_holder(spec.name)
        if holder:
            raise JobBusyError(f"job {spec.name!r} is already being run on this cluster by {holder}; "
                               f"stop it first (`ganray stop {spec.name}`) or wait for it to end")
        attempts = _attempts(base, subs)
        if attempts and attempts[-1].status == "SUCCEEDED":
            return Submitted(attempts[-1].id, False, "already SUCCEEDED")
        fresh = _changed_spec(client, spec, replace)
    new_id = _next_id(base, _attempts(base, subs))
    with staged(spec, working_dir) as folder:
        env_vars = settings.worker_env()
        api.submit(entrypoint=entrypoint(api.address, fresh), submission_id=new_id,
                   runtime_env={"working_dir": folder, **({"env_vars": env_vars} if env_vars else {})},
                   metadata={"ganray.job": spec.name, "ganray.digest": spec.digest()})
    return Submitted(new_id, True, "a fresh start of the name" if fresh else "submitted")


def entrypoint(address: str, fresh: bool) -> str:
    """``ganray run <spec>``; on the embedded stack, this installation's ganray (its Ray runs from it)."""
    ganray = shlex.quote(str(Path(sys.executable).parent / "ganray")) if is_local_stack(address) else "ganray"
    return f"{ganray} run {SPEC_FILE}" + (" --fresh" if fresh else "")


def _changed_spec(client, spec: JobSpec, replace: bool) -> bool:
    """True when the tracking server records the name with another spec and replace allows a fresh start;
    SubmitRefused without replace. False without a tracking server (the cluster's driver checks)."""
    run = runs.find_run(client, spec.name) if client is not None else None
    if run is None or run.data.tags.get(runs.DIGEST_TAG) == spec.digest():
        return False
    stored = runs.stored_spec(client, run)
    if stored is not None and same_spec(stored, spec):
        return False
    if replace:
        return True
    raise SubmitRefused(f"job {spec.name!r} already exists with a different spec ({spec_difference(stored, spec)}); "
                        f"--replace starts the name over with this spec")


@contextlib.contextmanager
def staged(spec: JobSpec, working_dir: str | None = None) -> Iterator[str]:
    """A folder for the runtime env's working_dir: the spec as SPEC_FILE and, with working_dir, links to
    that folder's entries (Ray packs what they point at, minus .git and what .gitignore excludes)."""
    with tempfile.TemporaryDirectory(prefix="ganray-submit-") as folder:
        if working_dir:
            src = Path(working_dir).resolve()
            if not src.is_dir():
                raise UsageError(f"--working-dir {working_dir}: not a folder")
            for entry in sorted(src.iterdir()):
                if entry.name == SPEC_FILE:
                    raise UsageError(f"--working-dir {working_dir} holds a {SPEC_FILE} of its own; rename it")
                if entry.name != ".git":
                    os.symlink(entry, Path(folder) / entry.name)
        path = Path(folder) / SPEC_FILE
        path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        if load_spec(path).digest() != spec.digest():  # what the cluster reads is what was checked here
            raise GanrayError(f"the spec of job {spec.name!r} does not survive a YAML round trip; please report")
        yield folder


def stop(api: JobApi, client, name: str, sub: Submission, timeout: float = 120.0, now: bool = False,
         say: Callable[[str], None] = lambda _: None) -> str:
    """Stops a submission (see the module doc); returns the Ray status it ended with."""
    if now or sub.status == "PENDING" or client is None:
        api.stop(sub.id)
        return wait_for_end(api, sub.id)
    run = _ask(client, name, sub, say)
    deadline, seen_active = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        status = api.status(sub.id)
        if status in TERMINAL:
            return status
        run = run or _ask(client, name, sub, say)
        state = _state(client, run)
        seen_active = seen_active or state in (State.STARTING, State.RUNNING)
        if state is State.STOPPED and seen_active:  # the checkpoint is committed: Ray may stop it now
            api.stop(sub.id)
            return wait_for_end(api, sub.id)
        time.sleep(1.0)
    say(f"no checkpoint within {timeout:.0f} s: stopping submission {sub.id} at once")
    api.stop(sub.id)
    return wait_for_end(api, sub.id)


def _ask(client, name: str, sub: Submission, say: Callable[[str], None]):
    """Writes the stop request on the job's run; the run, or None while the driver has not opened it."""
    try:
        run = runs.find_run(client, name)
        if run is not None:
            stop_channel.request_stop(client, run.info.run_id, sub.job_id, sub.id)
            say(f"asked submission {sub.id} to stop with a checkpoint (through the tracking server)")
        return run
    except Exception as err:  # noqa: BLE001 - the tracking server may be away: ask again next round
        say(f"cannot ask through the tracking server yet ({type(err).__name__}); retrying")
        return None


def _state(client, run) -> State | None:
    if run is None:
        return None
    try:
        return state_of(client.get_run(run.info.run_id))
    except Exception:  # noqa: BLE001 - away for a moment: ask again next round
        return None


def wait_for_end(api: JobApi, sid: str, wait_s: float = 120.0) -> str:
    """The submission's Ray status once it ends (or whatever it is after wait_s)."""
    deadline = time.monotonic() + wait_s
    status = api.status(sid)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = api.status(sid)
    return status


def latest_by_name(subs: list[Submission]) -> dict[str, Submission]:
    latest: dict[str, Submission] = {}
    for s in subs:  # oldest first: the last one of a name wins
        latest[s.name] = s
    return latest


def with_ray_status(statuses: list[dict[str, Any]], subs: list[Submission], name: str | None) -> list[dict[str, Any]]:
    """Job statuses with the Ray state of each name's latest submission beside them (None: never
    submitted); a name only the cluster knows yet (no MLflow run) gets empty training fields."""
    latest = latest_by_name(subs)
    out = [{**s, "ray_status": latest[s["name"]].status if s["name"] in latest else None,
            "submission_id": latest[s["name"]].id if s["name"] in latest else None} for s in statuses]
    known = {s["name"] for s in statuses}
    for n, sub in latest.items():
        if n not in known and (name is None or n == name):
            out.append({"name": n, "state": None, "step": 0, "total_steps": 0, "checkpoint": None, "run_id": None,
                        "preemptions": 0, "failures": 0, "ray_status": sub.status, "submission_id": sub.id})
    return out
