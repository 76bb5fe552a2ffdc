"""The preemption and failure timeline of one job, built from rank 0's reports.

Runs inside the MLflow callback on Ray Train's controller. A just-in-time
checkpoint report (``preempting``) opens a preemption; the first report after a
restore (``resumed_from_step``) closes it, or records a failure or a rerun when
no notice came before. Steps lost = the highest step reported before the
restart minus the step resumed from (a lower bound when no notice came: steps
computed after the last report are not known here).
"""
from __future__ import annotations

from typing import Any


class Timeline:
    def __init__(self, last_step: int = 0, events: list[dict[str, Any]] | None = None):
        self.max_step = last_step
        self.events = list(events or [])
        self.pending: dict[str, Any] | None = None
        self.last_stopped = False
        self.fresh_driver = last_step > 0  # a new driver of a run that already reported

    def observe(self, m: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Feeds one report; returns an event when it closes one."""
        event = None
        if "resumed_from_step" in m:
            if self.pending is not None:
                event = self.pending
            elif self.last_stopped:
                event = {"kind": "resume"}
            elif self.fresh_driver:
                event = {"kind": "rerun"}
            else:
                event = {"kind": "failure"}
            resumed = int(m["resumed_from_step"])
            event.update(restart_ts=m.get("restored_ts"), first_step_ts=m.get("first_step_ts"),
                         resumed_from_step=resumed, last_reported_step=self.max_step,
                         steps_lost=max(0, self.max_step - resumed))
            self.events.append(event)
            self.pending = None
        self.fresh_driver = False
        if m.get("preempting"):
            self.pending = {"kind": "preemption", "notice_ts": m.get("preempt_notice_ts"),
                            "deadline_ts": m.get("preempt_deadline_ts"), "checkpoint_step": int(m["step"]),
                            "checkpoint_committed_ts": now}
        self.last_stopped = bool(m.get("stopped"))
        step = int(m.get("step", 0))
        self.max_step = step if event is not None else max(self.max_step, step)  # a restart starts over
        return event

    def counts(self) -> dict[str, float]:
        return {"preemptions": sum(e["kind"] == "preemption" for e in self.events),
                "failures": sum(e["kind"] == "failure" for e in self.events),
                "steps_lost_total": sum(e["steps_lost"] for e in self.events)}
