"""A job's lifecycle: its states, the transitions allowed between them, and the one function that moves it.

The states are named here once; :meth:`Lifecycle.move` is the only writer of a job's state.
It checks the transition against :data:`TRANSITIONS` (anything else is a
:class:`TransitionError`), then writes every store: the MLflow run first (tag
``ganray.state`` and the run's status), which is the store of record that any machine
reaching the tracking server reads, then the local record under ``$GANRAY_HOME/jobs``,
a cache for this host. Modelled on Ray Train v2's controller states.

    created ──> starting ──> running ──> finished
                   │  ^         │
                   │  │         ├──> stopped      (Ctrl-C: a checkpoint, then a clean stop)
                   │  │         ├──> interrupted  (a second Ctrl-C: aborted without one)
                   │  │         └──> failed       (an error, or ended without a checkpoint)
                   │  └── starting | running | stopped | interrupted | failed   (run again)
                   └──> failed | interrupted
    any state but superseded ──> superseded       (--fresh retires the run)
"""
from __future__ import annotations

import logging
from enum import Enum
from typing import Any

from mlflow.tracking import MlflowClient

from orchestrator.job import host_record
from orchestrator.tracking_server import PATIENCE_S, patiently
from orchestrator.job.runs import CHECKPOINT_TAG, STATE_TAG
from orchestrator.tracking_server import TrackingError
from trainers.errors import GanrayError

log = logging.getLogger("ganray.lifecycle")


class State(str, Enum):
    CREATED = "created"  # the run exists; nothing started yet
    STARTING = "starting"  # a driver holds the job and is starting Ray Train
    RUNNING = "running"  # workers are training (or their driver died: run it again)
    STOPPED = "stopped"  # stopped on request with a checkpoint; run again to resume
    INTERRUPTED = "interrupted"  # aborted without a final checkpoint; resumes from the last one
    FAILED = "failed"  # an error, or training ended without a checkpoint
    FINISHED = "finished"  # all steps done, generator registered, summary stored
    SUPERSEDED = "superseded"  # retired by --fresh; the name starts over in a new run


S = State
RERUNNABLE = frozenset({S.STARTING, S.RUNNING, S.STOPPED, S.INTERRUPTED, S.FAILED})
TRANSITIONS: dict[State, frozenset[State]] = {
    S.CREATED: frozenset({S.STARTING, S.SUPERSEDED}),
    S.STARTING: frozenset({S.STARTING, S.RUNNING, S.FAILED, S.INTERRUPTED, S.SUPERSEDED}),
    S.RUNNING: frozenset({S.STARTING, S.FINISHED, S.STOPPED, S.INTERRUPTED, S.FAILED, S.SUPERSEDED}),
    S.STOPPED: frozenset({S.STARTING, S.SUPERSEDED}),
    S.INTERRUPTED: frozenset({S.STARTING, S.SUPERSEDED}),
    S.FAILED: frozenset({S.STARTING, S.SUPERSEDED}),
    S.FINISHED: frozenset({S.SUPERSEDED}),
    S.SUPERSEDED: frozenset(),
}
# MLflow's run status for each state: what its UI shows beside ours.
RUN_STATUS = {S.CREATED: "SCHEDULED", S.STARTING: "RUNNING", S.RUNNING: "RUNNING", S.STOPPED: "KILLED",
              S.INTERRUPTED: "KILLED", S.FAILED: "FAILED", S.FINISHED: "FINISHED", S.SUPERSEDED: "KILLED"}


class TransitionError(GanrayError, RuntimeError):
    """A move the lifecycle does not allow (a bug, or a job changed under our feet)."""


def state_of(run) -> State:
    """The state a run records (``created`` for a run that records none)."""
    raw = run.data.tags.get(STATE_TAG, S.CREATED.value)
    try:
        return State(raw)
    except ValueError:
        raise TransitionError(f"run {run.info.run_id} records an unknown state {raw!r}") from None


def check(frm: State, to: State) -> None:
    """TransitionError unless frm -> to is in the table."""
    if to not in TRANSITIONS[frm]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[frm])) or "none"
        raise TransitionError(f"a job cannot go from {frm.value} to {to.value} (from {frm.value}: {allowed})")


class Lifecycle:
    """Moves one job's state in every store; holds the state it last wrote."""

    def __init__(self, client: MlflowClient, name: str, run_id: str, state: State, patience_s: float = PATIENCE_S):
        self.client, self.name, self.run_id, self.state, self.patience_s = client, name, run_id, state, patience_s

    def move(self, to: State, **fields: Any) -> None:
        """Checks and makes the transition: MLflow (tag, run status, checkpoint tag) then the local record.

        ``fields`` go to the local record (``step``, ``checkpoint``, ``error``, ``summary``...);
        ``checkpoint`` also to the run. A tracking server that is unreachable is waited for (a
        logged backoff, up to ``patience_s``: ``retry.patiently``); one that stays away raises
        TrackingError once the local record holds the new state.
        """
        check(self.state, to)
        tags = {STATE_TAG: to.value}
        if fields.get("checkpoint"):
            tags[CHECKPOINT_TAG] = fields["checkpoint"]
        err = self._write_run(tags, RUN_STATUS[to])
        host_record.write_record(self.name, state=to.value, run_id=self.run_id, state_in_mlflow=err is None, **fields)
        self.state = to
        if err is not None:
            raise TrackingError(f"job {self.name!r} is {to.value}, but MLflow could not record it "
                                f"({type(err).__name__}); the local record has it")

    def _write_run(self, tags: dict[str, str], status: str) -> Exception | None:
        def write() -> None:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, v)
            if status in ("FINISHED", "FAILED", "KILLED"):
                self.client.set_terminated(self.run_id, status)
            else:
                self.client.update_run(self.run_id, status=status)

        try:
            patiently(write, f"recording state {tags[STATE_TAG]}", self.patience_s)
        except Exception as err:  # noqa: BLE001 - connection errors come in several types
            log.warning("MLflow did not record state %s: %s", tags[STATE_TAG], type(err).__name__)
            return err
        return None


def job_status(run) -> dict[str, Any]:
    """What ``ganray status --json`` prints for a job, read from its MLflow run alone."""
    from orchestrator.job.runs import JOB_TAG

    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    return {"name": tags.get(JOB_TAG, run.info.run_name).split("#", 1)[0], "state": state_of(run).value,
            "step": int(m.get("step", 0)), "total_steps": int(float(params.get("train.steps", 0))),
            "checkpoint": tags.get(CHECKPOINT_TAG), "run_id": run.info.run_id,
            "preemptions": int(m.get("preemptions", 0)), "failures": int(m.get("failures", 0))}
