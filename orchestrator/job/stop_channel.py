"""A checkpointed stop asked from any machine that reaches the tracking server, and the driver's stop signals.

``ganray stop`` writes the run tag ``ganray.stop_requested``: a JSON object naming the driver it
is meant for (its Ray job id and/or submission id), who asked and when. The driver running
the job polls its run (:class:`StopWatcher`, a thread beside ``progress.Progress``) and turns a
request meant for it into the same stop as a Ctrl-C: the control actor's ``request_stop``,
then a checkpoint, then ``stopped``. A request left on the run by an earlier stop names an
earlier driver, so it never stops a resumed one. The tag holds no secret.

:class:`DriverStop` is the driver's end of every stop: the first Ctrl-C or a request through the
tracking server asks for a checkpoint; a second Ctrl-C, or SIGTERM (Ray's ``stop_job``, a pod
going away) aborts at once, as a KeyboardInterrupt the driver turns into ``interrupted``.
"""
from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

STOP_TAG = "ganray.stop_requested"
log = logging.getLogger("ganray.stop")


def request_stop(client, run_id: str, job_id: str | None, submission_id: str | None) -> dict[str, Any]:
    """Asks the driver of run_id (Ray job job_id or submission submission_id) for a checkpointed stop."""
    request = {"job_id": job_id, "submission_id": submission_id, "by": socket.gethostname(),
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    client.set_tag(run_id, STOP_TAG, json.dumps(request, sort_keys=True))
    return request


def meant_for(raw: str | None, job_id: str | None, submission_id: str | None) -> dict[str, Any] | None:
    """The request in a tag value when it names this driver (its Ray job or its submission), else None."""
    if not raw:
        return None
    try:
        request = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None
    if (job_id and request.get("job_id") == job_id) or (submission_id and request.get("submission_id") ==
                                                           submission_id):
        return request
    return None


class StopWatcher:
    """Polls the run every few seconds; calls on_stop(request) once, for the first request meant for
    this driver. A tracking server that is away costs a warning, never the job."""

    def __init__(self, client, run_id: str, job_id: str | None, submission_id: str | None,
                 on_stop: Callable[[dict[str, Any]], None], every_s: float = 2.0):
        self.client, self.run_id, self.job_id, self.submission_id = client, run_id, job_id, submission_id
        self.on_stop, self.every_s = on_stop, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ganray-stop-watcher", daemon=True)

    def __enter__(self) -> "StopWatcher":
        if self.job_id or self.submission_id:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        failing = None
        while not self._stop.wait(self.every_s):
            try:
                request = meant_for(self.client.get_run(self.run_id).data.tags.get(STOP_TAG), self.job_id,
                                    self.submission_id)
                failing = None
            except Exception as err:  # noqa: BLE001 - the tracking server may be away for a while
                if failing != type(err).__name__:
                    log.warning("stop requests not read (%s); training goes on", type(err).__name__)
                failing, request = type(err).__name__, None
            if request is not None:
                self.on_stop(request)
                return


class DriverStop:
    """Installs the driver's SIGINT/SIGTERM handlers for a block; ``request`` is the checkpointed stop
    (once): the control actor's request_stop, which every worker sees."""

    def __init__(self, control):
        self.control = control
        self.requested = threading.Event()
        self._previous: dict[int, Any] = {}

    def request(self, why: str) -> None:
        if self.requested.is_set():
            return
        self.requested.set()
        sys.stderr.write(f"\nganray: stopping: writing a checkpoint ({why})\n")
        sys.stderr.flush()
        self.control.request_stop.remote()

    def from_tracking_server(self, request: dict[str, Any]) -> None:
        self.request(f"asked by {request.get('by')} at {request.get('at')} through the tracking server")

    def _on_sigint(self, signum, frame) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.request("Ctrl-C again to abort without one")

    def _on_sigterm(self, signum, frame) -> None:
        raise KeyboardInterrupt

    def __enter__(self) -> "DriverStop":
        self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint),
                          signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
