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
keeps polling through a metadata server that errors or hangs.
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

import requests

log = logging.getLogger("ganray.agent")

AWS_DEFAULT_URL = "http://169.254.169.254"
GCP_DEFAULT_URL = "http://metadata.google.internal"
GCP_NOTICE_S = 30.0


@dataclass(frozen=True)
class Notice:
    """A preemption notice: when it was seen and when the node goes (UNIX seconds)."""

    seen_at: float
    terminate_at: float
    source: str

    @property
    def remaining_s(self) -> float:
        return self.terminate_at - time.time()


class AwsSpotWatcher:
    """Polls AWS IMDSv2 for a spot interruption notice."""

    def __init__(self, base_url: str = AWS_DEFAULT_URL, timeout_s: float = 2.0):
        self.base, self.timeout = base_url.rstrip("/"), timeout_s
        self._token, self._token_until = None, 0.0

    def _session_token(self) -> str:
        if self._token and time.time() < self._token_until:
            return self._token
        r = requests.put(f"{self.base}/latest/api/token", timeout=self.timeout,
                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        r.raise_for_status()
        self._token, self._token_until = r.text.strip(), time.time() + 21000
        return self._token

    def poll(self) -> Notice | None:
        """The notice if AWS has scheduled this instance's stop, else None. Raises on I/O errors."""
        r = requests.get(f"{self.base}/latest/meta-data/spot/instance-action", timeout=self.timeout,
                         headers={"X-aws-ec2-metadata-token": self._session_token()})
        if r.status_code == 401:  # the token expired early: fetch a new one next time
            self._token = None
            r.raise_for_status()
        if r.status_code == 404:
            return None
        r.raise_for_status()
        body = json.loads(r.text)
        when = datetime.strptime(body["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        return Notice(time.time(), when, f"aws:{body.get('action', '?')}")


class GcpPreemptionWatcher:
    """Polls the GCE metadata server's ``instance/preempted`` flag."""

    def __init__(self, base_url: str = GCP_DEFAULT_URL, timeout_s: float = 2.0, notice_s: float = GCP_NOTICE_S):
        self.base, self.timeout, self.notice_s = base_url.rstrip("/"), timeout_s, notice_s

    def poll(self) -> Notice | None:
        r = requests.get(f"{self.base}/computeMetadata/v1/instance/preempted", timeout=self.timeout,
                         headers={"Metadata-Flavor": "Google"})
        r.raise_for_status()
        if r.text.strip().upper() == "TRUE":
            now = time.time()
            return Notice(now, now + self.notice_s, "gcp:preempted")
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


class NoticeAgent:
    """Polls a watcher and drains the node once per notice."""

    def __init__(self, watcher, drain: Callable[[float, str], None], margin_s: float = 10.0,
                 poll_s: float = 5.0, min_deadline_s: float = 1.0):
        self.watcher, self.drain, self.margin_s = watcher, drain, margin_s
        self.poll_s, self.min_deadline_s = poll_s, min_deadline_s
        self.notice: Notice | None = None
        self.drained = False
        self._last_error: str | None = None
        self._stop = threading.Event()

    def step(self) -> bool:
        """One poll; returns True once the node has been drained."""
        if self.drained:
            return True
        try:
            notice = self.watcher.poll()
        except Exception as err:  # noqa: BLE001 - keep polling through any metadata failure
            kind = f"{type(err).__name__}"
            if kind != self._last_error:
                log.warning("metadata server error (%s); still polling", kind)
                self._last_error = kind
            return False
        if self._last_error:
            log.info("metadata server answers again")
            self._last_error = None
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

    def run(self, once_drained: str = "wait") -> None:
        """Polls until drained, then waits (the node is about to go) or returns."""
        while not self._stop.is_set():
            if self.step() and once_drained == "return":
                return
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
