"""The node notice agent: turns a cloud's preemption notice into a Ray node drain.

One agent runs per node (a DaemonSet or sidecar on Kubernetes). It watches:

- ``aws``: IMDSv2 (a session token, then ``/latest/meta-data/spot/instance-action``,
  which answers 404 until AWS schedules the stop, then ``{"action", "time"}``);
  AWS gives two minutes.
- ``gcp``: ``/computeMetadata/v1/instance/preempted`` (``Metadata-Flavor: Google``),
  ``TRUE`` once the VM is being preempted; GCE gives 30 seconds.
- ``sigterm``: Kubernetes' SIGTERM to the pod; the notice lasts the grace period.

On a notice it drains its Ray node with reason PREEMPTION and a deadline shorter
than the notice by a margin, so that Ray Train's workers see
``ray.train.get_preemption_info()`` and write a just-in-time checkpoint before
the node goes. What a notice says is not trusted (``deadline_to_drain``, the one
place that decides when to drain): its stop time is clamped to now .. now + the
provider's notice (120 s AWS, 30 s GCE, the grace period for SIGTERM) plus
``NOTICE_SLACK_S``, so a stop time in 9999 drains as if the node went in two
minutes and one in the past as "the node goes now" (a deadline of
``MIN_DRAIN_S``). A stable notice drains once; a later notice that moves the
deadline earlier by more than ``REDRAIN_EARLIER_S`` drains again (Ray keeps the
latest drain's deadline, and the workers' guard takes an earlier one), a later
deadline never. AWS's ``action`` must be ``terminate``, ``stop`` or
``hibernate``. It writes one log line per event, every value from outside
quoted (repr), and keeps polling through a metadata server that errors, hangs,
trickles bytes (each poll has a total deadline, ``metadata_http.py``) or
answers garbage (a 200 that is not JSON, has no ``time``, an unparseable one or
another ``action``): each distinct problem is logged once, then at most once a
minute while it lasts.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from orchestrator.agent.metadata_http import Answer, request

log = logging.getLogger("ganray.agent")

AWS_DEFAULT_URL = "http://169.254.169.254"
GCP_DEFAULT_URL = "http://metadata.google.internal"
AWS_NOTICE_S = 120.0  # a spot interruption notice comes two minutes ahead
GCP_NOTICE_S = 30.0
AWS_ACTIONS = ("terminate", "stop", "hibernate")  # IMDS spot/instance-action's `action`: nothing else is a notice
NOTICE_SLACK_S = 10.0  # how far past the provider's notice a stop time may lie (clock skew, rounding) before clamping
MIN_DRAIN_S = 2.0  # the shortest drain deadline: a stop time that already passed still gives the workers this long
REDRAIN_EARLIER_S = 1.0  # a later notice drains again only when it moves the deadline earlier by more than this
REPEAT_EVERY_S = 60.0  # a problem that lasts is logged again at most this often


@dataclass(frozen=True)
class Notice:
    """A preemption notice: when it was seen and when the node goes (UNIX seconds)."""

    seen_at: float
    terminate_at: float
    source: str


class BadAnswer(Exception):
    """The metadata server answered, but not with anything usable; `key` tells one answer from another."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def _status_error(answer: Answer, what: str) -> BadAnswer:
    return BadAnswer(f"HTTP {answer.status} for {what}", f"HTTP {answer.status}")


def _garbage(why: str, answer: Answer) -> BadAnswer:
    shown = answer.text[:120] + ("..." if len(answer.text) > 120 or answer.truncated else "")
    return BadAnswer(f"answered {answer.status} with {why}: {shown!r}", f"{why}\0{answer.text[:1000]}")


def parse_instance_action(answer: Answer) -> tuple[float, str]:
    """(stop time in UNIX seconds, action) of an IMDS spot/instance-action answer; BadAnswer for garbage."""
    try:
        body = json.loads(answer.text)
    except ValueError:
        raise _garbage("something that is not JSON", answer) from None
    if not isinstance(body, dict) or "time" not in body:
        raise _garbage("JSON without `time`", answer)
    try:
        when = datetime.strptime(str(body["time"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _garbage("an unparseable `time`", answer) from None
    if body.get("action") not in AWS_ACTIONS:
        raise _garbage(f"an `action` that is none of {', '.join(AWS_ACTIONS)}", answer)
    return when.timestamp(), body["action"]


class AwsSpotWatcher:
    """Polls AWS IMDSv2 for a spot interruption notice.

    ``timeout_s`` bounds each read; ``deadline_s`` bounds a whole poll (token and answer together).
    """

    notice_s = AWS_NOTICE_S

    def __init__(self, base_url: str = AWS_DEFAULT_URL, timeout_s: float = 2.0, deadline_s: float = 4.0):
        self.base, self.timeout, self.deadline_s = base_url.rstrip("/"), timeout_s, deadline_s
        self._token, self._token_until = None, 0.0

    def _call(self, method: str, path: str, headers: dict[str, str], until: float) -> Answer:
        return request(method, f"{self.base}{path}", headers, total_s=until - time.monotonic(),
                       read_timeout_s=self.timeout)

    def _session_token(self, until: float) -> str:
        if self._token and time.time() < self._token_until:
            return self._token
        r = self._call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, until)
        if r.status != 200:
            raise _status_error(r, "the IMDSv2 token")
        token = r.text.strip()
        if not token or len(token) > 512 or not token.isprintable() or r.truncated:
            raise _garbage("no usable IMDSv2 token", r)
        self._token, self._token_until = token, time.time() + 21000
        return self._token

    def poll(self) -> Notice | None:
        """The notice if AWS has scheduled this instance's stop, else None; raises on I/O errors and garbage."""
        until = time.monotonic() + self.deadline_s
        r = self._call("GET", "/latest/meta-data/spot/instance-action",
                       {"X-aws-ec2-metadata-token": self._session_token(until)}, until)
        if r.status == 401:  # the token expired early: fetch a new one next time
            self._token = None
        if r.status == 404:
            return None
        if r.status != 200:
            raise _status_error(r, "spot/instance-action")
        when, action = parse_instance_action(r)
        return Notice(time.time(), when, f"aws:{action}")


class GcpPreemptionWatcher:
    """Polls the GCE metadata server's ``instance/preempted`` flag (``TRUE`` or ``FALSE``).

    The notice runs from the first poll that saw ``TRUE``, so polling on does not move the stop time.
    """

    def __init__(self, base_url: str = GCP_DEFAULT_URL, timeout_s: float = 2.0, notice_s: float = GCP_NOTICE_S,
                 deadline_s: float = 4.0):
        self.base, self.timeout, self.notice_s = base_url.rstrip("/"), timeout_s, notice_s
        self.deadline_s = deadline_s
        self._since: float | None = None

    def poll(self) -> Notice | None:
        r = request("GET", f"{self.base}/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"},
                    total_s=self.deadline_s, read_timeout_s=self.timeout)
        if r.status != 200:
            raise _status_error(r, "instance/preempted")
        flag = r.text.strip().upper()
        if flag == "TRUE":
            self._since = self._since or time.time()
            return Notice(self._since, self._since + self.notice_s, "gcp:preempted")
        if flag != "FALSE":
            raise _garbage("neither TRUE nor FALSE", r)
        self._since = None
        return None


class SigtermWatcher:
    """A notice when this process receives SIGTERM (Kubernetes pod termination)."""

    def __init__(self, grace_s: float = 30.0):
        self.grace_s = self.notice_s = grace_s
        self._at: float | None = None
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        if self._at is None:
            self._at = time.time()

    def poll(self) -> Notice | None:
        return Notice(self._at, self._at + self.grace_s, "sigterm") if self._at is not None else None


def drain_ray_node(gcs_address: str, node_id: str, deadline_s: float, message: str) -> None:
    """Asks Ray's GCS to drain node_id for PREEMPTION, the node to go at deadline_s (UNIX seconds)."""
    import ray
    from ray.core.generated import autoscaler_pb2

    client = ray._raylet.GcsClient(address=gcs_address)
    accepted, why = client.drain_node(node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                      message, int(deadline_s * 1000))
    if not accepted:
        raise RuntimeError(f"Ray refused to drain node {node_id!r}: {why!r}")


def local_node_id(gcs_address: str) -> str:
    """The id of the Ray node on this host (the one a driver started here attaches to)."""
    import ray

    ray.init(address=gcs_address, log_to_driver=False, logging_level="ERROR")
    try:
        return ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()


class ProblemLog:
    """Log lines for a metadata server that keeps failing, bounded however long it lasts.

    Each distinct problem (an error kind, an HTTP status, a distinct garbage
    answer; up to max_distinct of them) is logged when first seen; after that a
    line comes at most once per every_s, counting the failed polls in between.
    A good answer ends the episode.
    """

    def __init__(self, every_s: float = REPEAT_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 max_distinct: int = 32):
        self.every_s, self.clock, self.max_distinct = every_s, clock, max_distinct
        self.seen: set[str] = set()
        self.last_line: float | None = None
        self.quiet = 0  # failed polls since the last line

    def problem(self, key: str, message: str) -> None:
        now = self.clock()
        if key not in self.seen and len(self.seen) < self.max_distinct:
            self.seen.add(key)
        elif self.last_line is not None and now - self.last_line < self.every_s:
            self.quiet += 1
            return
        else:
            message += f" (still failing: {self.quiet + 1} polls since the last line)"
        log.warning("%s; still polling", message)
        self.last_line, self.quiet = now, 0

    def recovered(self) -> None:
        if self.seen:
            log.info("metadata server answers again")
        self.seen.clear()
        self.last_line, self.quiet = None, 0


def describe(err: Exception) -> tuple[str, str]:
    """(key, log message) of a failed poll."""
    if isinstance(err, BadAnswer):
        text = f"metadata server error ({err})" if err.key.startswith("HTTP ") else f"metadata server {err}"
        return err.key, text
    return type(err).__name__, f"metadata server error ({type(err).__name__}: {str(err)[:200]!r})"


def drain_deadline(terminate_at: float, now: float, notice_s: float, margin_s: float,
                   min_s: float = MIN_DRAIN_S) -> float:
    """The deadline to drain with for a stop at terminate_at (UNIX seconds), seen at now.

    The stop time is clamped to now .. now + notice_s + NOTICE_SLACK_S (no provider stops a node
    later than its notice says, and a past stop time means "now"), then the margin comes off; the
    deadline is never less than min_s ahead.
    """
    stop = min(max(terminate_at, now), now + notice_s + NOTICE_SLACK_S)
    return max(stop - margin_s, now + min_s)


def deadline_to_drain(terminate_at: float, now: float, notice_s: float, margin_s: float, min_s: float,
                      drained: float | None) -> float | None:
    """The one decision of when to drain: the deadline to drain with now, or None to drain nothing.

    drained is the deadline of the last accepted drain (None: not drained yet). A notice drains once;
    a later one drains again only when its deadline is earlier than drained by more than
    REDRAIN_EARLIER_S (Ray keeps the latest drain's deadline, so a later one would move it later).
    """
    deadline = drain_deadline(terminate_at, now, notice_s, margin_s, min_s)
    if drained is not None and deadline >= drained - REDRAIN_EARLIER_S:
        return None
    return deadline


class NoticeAgent:
    """Polls a watcher (its ``notice_s``: the provider's notice) and drains the node when a notice says so
    (``deadline_to_drain``). ``clock`` paces the log lines (tests inject one)."""

    def __init__(self, watcher, drain: Callable[[float, str], None], margin_s: float = 10.0,
                 poll_s: float = 5.0, min_deadline_s: float = MIN_DRAIN_S,
                 clock: Callable[[], float] = time.monotonic):
        self.watcher, self.drain, self.margin_s = watcher, drain, margin_s
        self.poll_s, self.min_deadline_s = poll_s, min_deadline_s
        self.notice: Notice | None = None
        self.drained_deadline: float | None = None  # the deadline of the last accepted drain
        self.problems = ProblemLog(clock=clock)
        self._stop = threading.Event()

    def step(self) -> bool:
        """One poll; drains when the notice calls for it; returns True once the node has been drained."""
        try:
            notice = self.watcher.poll()
        except Exception as err:  # noqa: BLE001 - keep polling through any metadata failure
            self.problems.problem(*describe(err))
            return self.drained_deadline is not None
        self.problems.recovered()
        if notice is None:
            return self.drained_deadline is not None
        self.notice = notice
        now = time.time()
        deadline = deadline_to_drain(notice.terminate_at, now, self.watcher.notice_s, self.margin_s,
                                     self.min_deadline_s, self.drained_deadline)
        if deadline is not None:
            self._drain(notice, deadline, now)
        return self.drained_deadline is not None

    def _drain(self, notice: Notice, deadline: float, now: float) -> None:
        again = " again, earlier" if self.drained_deadline is not None else ""
        log.info("preemption notice %r: node goes in %.0f s (the provider's notice: at most %.0f s); "
                 "draining%s with deadline in %.0f s", notice.source, notice.terminate_at - now,
                 self.watcher.notice_s, again, deadline - now)
        try:
            self.drain(deadline, f"ganray agent: preemption notice {notice.source!r}")
        except Exception as err:  # noqa: BLE001 - retry with the next poll
            log.error("drain failed (%s: %r); will retry", type(err).__name__, str(err))
            return
        self.drained_deadline = deadline
        log.info("node drained for preemption")

    def run(self) -> None:
        """Polls until stopped; after a drain it polls on (a later notice may move the deadline earlier)."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
