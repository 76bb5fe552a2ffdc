"""Using a preemption notice: train on until the last safe moment, checkpoint once, hold.

Ray Train turns a node drain with reason PREEMPTION (``ganray agent`` sends it)
into ``ray.train.get_preemption_info()`` on every worker. That call is a
collective, so the loop's rank 0 decides *when* every rank calls it (on a time
cadence, ``check_every_s``) and shares the decision with the other flags.

Once a notice is known, rank 0 decides each step whether the just-in-time
checkpoint is due: when the time left before the deadline no longer covers one
more step, the measured checkpoint time and a safety margin (which also covers
Ray Train's controller picking up the report, every 2 s). After that checkpoint
the workers take no optimiser step until the node goes, so no step is lost:
returning cleanly instead would end the run as finished.

A later drain of the node with an earlier deadline (the agent drains again when
a later notice moves the deadline earlier, and Ray reports the latest drain's
deadline) re-plans: before the just-in-time checkpoint it is due by the earlier
deadline, after it the hold ends by it. A later deadline never moves it later.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Notice:
    seen_at: float  # UNIX seconds, when this worker first saw it
    deadline: float | None  # UNIX seconds, when the node goes (None: unknown)


class PreemptionGuard:
    """Per-worker preemption state: the notice, checkpoint timing, the hold after the JIT checkpoint."""

    def __init__(self, check_every_s: float = 1.0, margin_s: float = 5.0, hold_extra_s: float = 120.0,
                 query: Callable[[], Any] | None = None, enabled: bool = True):
        self.check_every_s, self.margin_s, self.hold_extra_s = check_every_s, margin_s, hold_extra_s
        self.enabled = enabled
        self._query = query
        self.notice: Notice | None = None
        self.last_check = 0.0
        self.checkpoint_seconds: float | None = None  # the slowest checkpoint write seen so far
        self.jit_step: int | None = None
        self.checks = 0
        self.check_seconds = 0.0
        self.active = False  # whether the last poll saw a notice

    # -- what rank 0 decides -------------------------------------------------
    def check_due(self, now: float) -> bool:
        return self.enabled and now - self.last_check >= self.check_every_s

    def jit_due(self, now: float, step_seconds: float) -> bool:
        """True when the just-in-time checkpoint must be written now."""
        if self.notice is None or self.jit_step is not None:
            return False
        if self.notice.deadline is None or self.checkpoint_seconds is None:
            return True  # no deadline, or no idea how long a checkpoint takes: write it at once
        left = self.notice.deadline - now
        return left <= step_seconds + self.checkpoint_seconds + self.margin_s

    # -- what every rank does ------------------------------------------------
    def poll(self) -> Notice | None:
        """Calls get_preemption_info (a collective: every rank must call it alike)."""
        t0 = time.perf_counter()
        info = self._query() if self._query else _ray_preemption_info()
        self.checks += 1
        self.check_seconds += time.perf_counter() - t0
        self.last_check = time.time()
        self.active = info is not None
        if info is not None:
            self._take(info)
        if info is None and self.notice is not None and self.jit_step is None:
            self.notice = None  # the drain was cancelled before we acted on it
        return self.notice

    def _take(self, info: Any) -> None:
        """The notice of a get_preemption_info answer: the first one, or an earlier deadline than the one held."""
        deadline_ms = getattr(info, "deadline_ms", None)
        deadline = deadline_ms / 1000 if deadline_ms else None
        if self.notice is None:
            self.notice = Notice(time.time(), deadline)
        elif deadline is not None and (self.notice.deadline is None or deadline < self.notice.deadline):
            self.notice.deadline = deadline

    def record_checkpoint_time(self, seconds: float) -> None:
        self.checkpoint_seconds = max(seconds, self.checkpoint_seconds or 0.0)

    def keep_holding(self, now: float) -> bool:
        """After the JIT checkpoint: hold while the notice stands, up to the deadline plus a grace."""
        if self.notice is None or not self.active:
            return False  # no notice, or the drain was cancelled: train on
        end = (self.notice.deadline or self.notice.seen_at) + self.hold_extra_s
        return now < end

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"preempt_checks": self.checks,
                                 "preempt_check_ms": 1000 * self.check_seconds / max(self.checks, 1)}
        if self.notice is not None:
            out["preempt_notice_ts"] = self.notice.seen_at
            if self.notice.deadline is not None:
                out["preempt_deadline_ts"] = self.notice.deadline
        return out


def _ray_preemption_info():
    import ray.train

    return ray.train.get_preemption_info()
