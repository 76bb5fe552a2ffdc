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
the node goes. It drains once per notice, writes one log line per event, and
keeps polling through a metadata server that errors, hangs, trickles bytes
(each poll has a total deadline, ``metadata_http.py``) or answers garbage (a
200 that is not JSON, has no ``time`` or an unparseable one): each distinct
problem is logged once, then at most once a minute while it lasts.
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
GCP_NOTICE_S = 30.0
REPEAT_EVERY_S = 60.0  # a problem that lasts is logged again at most this often


@dataclass(frozen=True)
class Notice:
    """A preemption notice: when it was seen and when the node goes (UNIX seconds)."""

    seen_at: float
    terminate_at: float
    source: str

    @property
    def remaining_s(self) -> float:
        return self.terminate_at - time.time()


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
    return when.timestamp(), str(body.get("action", "?"))


class AwsSpotWatcher:
    """Polls AWS IMDSv2 for a spot interruption notice.

    ``timeout_s`` bounds each read; ``deadline_s`` bounds a whole poll (token and answer together).
    """

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
    """Polls the GCE metadata server's ``instance/preempted`` flag (``TRUE`` or ``FALSE``)."""

    def __init__(self, base_url: str = GCP_DEFAULT_URL, timeout_s: float = 2.0, notice_s: float = GCP_NOTICE_S,
                 deadline_s: float = 4.0):
        self.base, self.timeout, self.notice_s = base_url.rstrip("/"), timeout_s, notice_s
        self.deadline_s = deadline_s

    def poll(self) -> Notice | None:
        r = request("GET", f"{self.base}/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"},
                    total_s=self.deadline_s, read_timeout_s=self.timeout)
        if r.status != 200:
            raise _status_error(r, "instance/preempted")
        flag = r.text.strip().upper()
        if flag == "TRUE":
            now = time.time()
            return Notice(now, now + self.notice_s, "gcp:preempted")
        if flag != "FALSE":
            raise _garbage("neither TRUE nor FALSE", r)
        return None


class SigtermWatcher:
    """A notice when this process receives SIGTERM (Kubernetes pod termination)."""

    def __init__(self, grace_s: float = 30.0):
        self.grace_s = grace_s
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
        raise RuntimeError(f"Ray refused to drain node {node_id}: {why}")


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
    return type(err).__name__, f"metadata server error ({type(err).__name__}: {str(err)[:200]})"


class NoticeAgent:
    """Polls a watcher and drains the node once per notice. ``clock`` paces the log lines (tests inject one)."""

    def __init__(self, watcher, drain: Callable[[float, str], None], margin_s: float = 10.0,
                 poll_s: float = 5.0, min_deadline_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.watcher, self.drain, self.margin_s = watcher, drain, margin_s
        self.poll_s, self.min_deadline_s = poll_s, min_deadline_s
        self.notice: Notice | None = None
        self.drained = False
        self.problems = ProblemLog(clock=clock)
        self._stop = threading.Event()

    def step(self) -> bool:
        """One poll; returns True once the node has been drained."""
        if self.drained:
            return True
        try:
            notice = self.watcher.poll()
        except Exception as err:  # noqa: BLE001 - keep polling through any metadata failure
            self.problems.problem(*describe(err))
            return False
        self.problems.recovered()
        if notice is None:
            return False
        self.notice = notice
        deadline = max(notice.terminate_at - self.margin_s, time.time() + self.min_deadline_s)
        log.info("preemption notice (%s): node goes in %.0f s; draining with deadline in %.0f s",
                 notice.source, notice.remaining_s, deadline - time.time())
        try:
            self.drain(deadline, f"ganray agent: {notice.source}")
        except Exception as err:  # noqa: BLE001 - retry with the next poll
            log.error("drain failed (%s: %s); will retry", type(err).__name__, err)
            return False
        self.drained = True
        log.info("node drained for preemption")
        return True

    def run(self) -> None:
        """Polls until stopped; after the drain it keeps waiting (the node is about to go)."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
