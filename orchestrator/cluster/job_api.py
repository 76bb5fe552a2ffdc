"""Ray's Job API, as ganray uses it: a job name's submissions on a cluster's dashboard.

Everything here talks HTTP to the cluster's dashboard (``JobSubmissionClient`` and the state
API), which is all a laptop reaches. Which dashboard is ``endpoints.resolve_endpoints``'s rule
(``--address``, ``RAY_DASHBOARD_ADDRESS``, an http(s) ``RAY_ADDRESS``, the embedded stack's);
its Ray token is ``tokens.ray_token``'s, sent in one ``Authorization`` header and nowhere else.
A ganray submission carries the metadata ``ganray.job`` (the job name) and ``ganray.digest``
(the spec digest).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

from orchestrator.cluster.endpoints import ClusterError, is_local_stack, resolve_endpoints
from orchestrator.cluster.tokens import ray_headers, ray_token

JOB_KEY, DIGEST_KEY = "ganray.job", "ganray.digest"
ACTIVE = frozenset({"PENDING", "RUNNING"})
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_ADDRESS_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")  # Ray lets these override a client's address
_CHATTY_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                   "ray._private.runtime_env.packaging")


@contextlib.contextmanager
def _own_address() -> Iterator[None]:
    """Ray's clients prefer RAY_ADDRESS over the address they are given: hide it while one is built."""
    saved = {k: os.environ.pop(k) for k in _ADDRESS_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass(frozen=True)
class Submission:
    """One ganray job submission as the dashboard reports it."""
    id: str
    name: str
    digest: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    job_id: str | None  # the Ray job id of its driver, once that driver connected
    start_time: int
    end_time: int | None
    message: str | None
    entrypoint: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _submission(d) -> Submission | None:
    meta = d.metadata or {}
    if not d.submission_id or JOB_KEY not in meta:
        return None
    status = str(getattr(d.status, "value", d.status))
    return Submission(d.submission_id, meta[JOB_KEY], meta.get(DIGEST_KEY, ""), status, d.job_id,
                      int(d.start_time or 0), d.end_time, d.message, d.entrypoint)


class JobApi:
    """A client of one cluster's Job API; every failure is a ClusterError naming the dashboard."""

    def __init__(self, address: str):
        self.address = address
        self._token = ray_token(is_local_stack(address))
        self._headers = ray_headers(self._token)
        from ray.job_submission import JobSubmissionClient

        for noisy in _CHATTY_LOGGERS:  # package uploads and websocket closes, at INFO on stderr
            logging.getLogger(noisy).setLevel(logging.WARNING)
        with _own_address():
            self.client = self._call(JobSubmissionClient, address, headers=dict(self._headers))

    @classmethod
    def connect(cls, explicit: str | None = None) -> "JobApi":
        """The Job API of the dashboard that --address (explicit) or the environment names (``endpoints``)."""
        return cls(resolve_endpoints(address=explicit).dashboard_url())

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - Ray raises RuntimeError, ConnectionError, AuthenticationError...
            raise self._error(err) from None

    def _error(self, err: Exception) -> ClusterError:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if self._token:
            text = text.replace(self._token, "***")
        if type(err).__name__ == "AuthenticationError" or " 401" in text or " 403" in text:
            why = ("the dashboard refused the Ray token (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)" if self._token
                   else "it needs the cluster's Ray token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
            return ClusterError(f"Ray dashboard at {self.address}: {why}")
        return ClusterError(f"Ray dashboard at {self.address}: {type(err).__name__}: {text[:500]}")

    def submissions(self, name: str | None = None) -> list[Submission]:
        """ganray's submissions on the cluster (of one job name), oldest first."""
        found = [s for d in self._call(self.client.list_jobs) if (s := _submission(d)) is not None]
        return sorted((s for s in found if name is None or s.name == name), key=lambda s: (s.start_time, s.id))

    def latest(self, name: str) -> Submission | None:
        subs = self.submissions(name)
        return subs[-1] if subs else None

    def status(self, submission_id: str) -> str:
        status = self._call(self.client.get_job_status, submission_id)
        return str(getattr(status, "value", status))

    def submit(self, **kwargs) -> str:
        return self._call(self.client.submit_job, **kwargs)

    def stop(self, submission_id: str) -> bool:
        return bool(self._call(self.client.stop_job, submission_id))

    def logs(self, submission_id: str) -> str:
        return self._call(self.client.get_job_logs, submission_id)

    def follow(self, submission_id: str) -> Iterator[str]:
        """The submission's log as it grows, until the job ends."""
        import asyncio

        loop, stream = asyncio.new_event_loop(), self.client.tail_job_logs(submission_id)
        try:
            while True:
                try:
                    chunk = loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
                except Exception as err:  # noqa: BLE001 - as _call
                    raise self._error(err) from None
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(stream.aclose())
            loop.close()

    def lock_holder(self, name: str) -> str | None:
        """Who holds the job's cluster lock (``cluster_lock``), from the state API; None when nobody."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        from orchestrator.job.cluster_lock import actor_name, describe

        with _own_address():
            state = self._call(StateApiClient, self.address, headers={**self._headers,
                                                                       "Content-Type": "application/json"})
        options = ListApiOptions(filters=[("name", "=", actor_name(name)), ("state", "=", "ALIVE")])
        actors = self._call(state.list, StateResource.ACTORS, options=options, raise_on_missing_output=False)
        if not actors:
            return None
        a = actors[0]
        job_id = a["job_id"] if isinstance(a, dict) else a.job_id
        for d in self._call(self.client.list_jobs):
            if d.job_id == job_id:
                info = d.driver_info
                return describe({"submission_id": d.submission_id, "job_id": job_id,
                                 "pid": info.pid if info else "?", "host": info.node_ip_address if info else "?"})
        return describe({"job_id": job_id, "pid": "?", "host": "?"})


def stop_own_submission(wait_s: float = 60.0) -> bool:
    """For a submitted driver that ended ``stopped``: asks Ray to stop its own submission, so that Ray
    records STOPPED (not FAILED), and waits for Ray's SIGTERM, which ends this process with status 0.
    False (at once) when this driver was not submitted; False after wait_s, or when the dashboard
    could not be asked (a warning says why): the caller then exits as a plain stopped driver."""
    import signal
    import sys
    import time

    from orchestrator.job.ray_runtime import own_submission_id

    sid = own_submission_id()
    if not sid:
        return False
    def on_sigterm(*_):  # Ray's stop: this driver's work is done
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        JobApi(os.environ.get("RAY_ADDRESS") or "auto").stop(sid)
    except ClusterError as err:
        sys.stderr.write(f"ganray: warning: could not mark submission {sid} stopped: {err}\n")
        return False
    time.sleep(wait_s)
    return False
