"""What the Train controller sends to one MLflow run, sent in order by a background thread that
waits out a tracking server that went away.

``MlflowReportCallback`` puts each report's metrics (stamped when the report arrived), tags,
sample grids and the preemption timeline here and returns at once, so a report never waits
on tracking and training goes on through an outage. The sender retries with a logged
backoff (``orchestrator.tracking_server``) and keeps everything, in order, until the server answers;
:meth:`Outbox.drain` lets the last report wait (bounded) until all of it is sent.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.tracking_server import Backoff, quick_requests, unreachable
from trainers import tempdirs

log = logging.getLogger("ganray.outbox")
BATCH = 500  # MLflow takes at most 1,000 metrics per log_batch


class Outbox:
    """Metrics, tags, files and texts for one run; sent by one daemon thread started on first use."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._cond = threading.Condition()
        self._metrics: list[Metric] = []
        self._tags: dict[str, str] = {}
        self._files: list[tuple[str, str]] = []  # (local path in our folder, artifact dir), removed once sent
        self._texts: dict[str, str] = {}  # artifact file -> its latest text
        self._dir: str | None = None  # our folder for files waiting to be sent
        self._staged = 0  # files being written into it
        self._sending = False
        self._thread: threading.Thread | None = None
        self._away_since: float | None = None
        self._last_log = 0.0
        self._closed = False

    # -- the callback's side ---------------------------------------------
    def put(self, metrics: list[Metric] = (), tags: dict[str, str] | None = None,
            texts: dict[str, str] | None = None) -> None:
        with self._cond:
            self._metrics += metrics
            self._tags.update(tags or {})
            self._texts.update(texts or {})
            self._start()
            self._cond.notify_all()

    def stage(self, name: str) -> str:
        """A path in our folder to write a file to; then :meth:`put_file` (or :meth:`unstage`) it."""
        with self._cond:
            if self._dir is None:
                self._dir = tempdirs.make("ganray-grid-")
            self._staged += 1
            return os.path.join(self._dir, name)

    def put_file(self, path: str, artifact_dir: str) -> None:
        with self._cond:
            self._staged -= 1
            self._files.append((path, artifact_dir))
            self._start()
            self._cond.notify_all()

    def unstage(self, path: str) -> None:
        with self._cond:
            self._staged -= 1
            if os.path.exists(path):
                os.remove(path)
            self._remove_dir_if_idle()

    def pending(self) -> dict[str, int]:
        with self._cond:
            return {"metrics": len(self._metrics), "tags": len(self._tags), "files": len(self._files),
                    "texts": len(self._texts), "sending": int(self._sending)}

    def away(self) -> bool:
        """Whether the last attempt to send failed (the server is away)."""
        return self._away_since is not None

    def drain(self, timeout_s: float) -> bool:
        """Waits until everything put so far is sent (True), or timeout_s passed (False, logged)."""
        deadline, logged = time.monotonic() + timeout_s, False
        with self._cond:
            while self._has_work() or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("MLflow still unreachable after %.0fs: %d metrics, %d tags, %d files not logged",
                              timeout_s, len(self._metrics), len(self._tags), len(self._files) + len(self._texts))
                    return False
                if not logged and self._away_since is not None:
                    log.warning("the last report waits up to %.0fs for MLflow to take %d kept metrics and %d files",
                                left, len(self._metrics), len(self._files))
                    logged = True
                self._cond.wait(min(left, 1.0))
        return True

    # -- the sender ------------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self._metrics or self._tags or self._files or self._texts)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="ganray-mlflow-outbox", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        quick_requests()
        backoff = Backoff(first_s=1.0, cap_s=10.0)
        while True:
            with self._cond:
                while not self._has_work() and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._sending = True
            try:
                self._send(MlflowClient(self.tracking_uri))
                failed = None
            except Exception as err:  # noqa: BLE001 - connection errors come in several types
                failed = err
            with self._cond:  # the state is right before anyone waiting on it wakes
                self._sending = False
                if failed is None:
                    self._note_back()
                    backoff.reset()
                else:
                    self._note_away(failed)
                self._cond.notify_all()
                if failed is not None:
                    self._cond.wait(backoff.delay())  # close() wakes it

    def _send(self, client: MlflowClient) -> None:
        """Sends what is queued, in order (metrics, tags, files, texts); each item leaves the queue only once
        MLflow took it (only this thread removes, the callback only adds), so an error loses nothing."""
        with self._cond:
            n = len(self._metrics)
        while n > 0:
            with self._cond:
                batch = self._metrics[:min(BATCH, n)]
            client.log_batch(self.run_id, metrics=batch)
            with self._cond:
                del self._metrics[:len(batch)]
            n -= len(batch)
        self._send_latest(self._tags, lambda k, v: client.set_tag(self.run_id, k, v))
        self._send_files(client)
        self._send_latest(self._texts, lambda k, v: client.log_text(self.run_id, v, k))

    def _send_latest(self, queue: dict[str, str], send) -> None:
        with self._cond:
            items = list(queue.items())
        for k, v in items:
            send(k, v)
            with self._cond:
                if queue.get(k) == v:  # unless a newer value came meanwhile
                    del queue[k]

    def _send_files(self, client: MlflowClient) -> None:
        with self._cond:
            n = len(self._files)
        for _ in range(n):
            path, artifact_dir = self._files[0]
            client.log_artifact(self.run_id, path, artifact_dir)
            with self._cond:
                self._files.pop(0)
                os.remove(path)
                self._remove_dir_if_idle()

    def _note_away(self, err: Exception) -> None:
        """Called with the lock held: one line when the server goes away, then one a minute."""
        now = time.monotonic()
        if self._away_since is None:
            self._away_since, self._last_log = now, now
            why = f"unreachable ({type(err).__name__})" if unreachable(err) else f"refused them ({str(err)[:300]})"
            log.warning("MLflow %s; training goes on and reports are kept until it takes them", why)
        elif now - self._last_log >= 60:
            self._last_log = now
            log.warning("MLflow unreachable for %.0fs (%s); keeping %d metrics and %d files",
                        now - self._away_since, type(err).__name__, len(self._metrics), len(self._files))

    def _note_back(self) -> None:
        """Called with the lock held."""
        if self._away_since is not None:
            log.warning("MLflow answered again after %.0fs; the kept reports are logged",
                        time.monotonic() - self._away_since)
            self._away_since = None

    def _remove_dir_if_idle(self) -> None:
        """Called with the lock held: our folder goes once nothing in it waits or is being written."""
        if self._dir is not None and not self._files and not self._staged:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def close(self) -> None:
        """Stops the sender and removes the folder of unsent files (what was not sent is dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
