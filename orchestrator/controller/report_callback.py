"""The Ray Train controller callback: rank 0's reports, checkpoints, grids and the timeline into the job's run.

Ray Train calls ``after_report`` on its controller once per report; this is the one
place a job is logged to MLflow from. Everything goes through an :class:`Outbox`, which
sends it from a background thread and keeps it, in order, while the server is away, so a
report never waits on tracking and nothing is lost: each metric keeps the step and the
time of its report. The last report (the last step, or a stop) waits, up to
``retry.PATIENCE_S``, until all of it is sent. The callback never writes the job's state:
``lifecycle`` does.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.train.v2.api.callback import UserCallback

from orchestrator.controller.outbox import Outbox
from orchestrator.tracking_server import PATIENCE_S, quick_requests
from orchestrator.job.runs import CHECKPOINT_STEP_TAG, CHECKPOINT_TAG
from orchestrator.controller.timeline import Timeline
from trainers.checkpoints.format import GRID_FILE, grid_name
from trainers.checkpoints.layout import checkpoint_step
from trainers.checkpoints.storage import checkpoint_uri

log = logging.getLogger("ganray.report_callback")
TIMELINE_ARTIFACT = "preemptions.json"


class MlflowReportCallback(UserCallback):
    """Logs rank 0's metrics, each checkpoint's URI and sample grid, and the preemption timeline."""

    def __init__(self, tracking_uri: str, run_id: str, storage_url: str, keep_evaluated: bool = False):
        self.tracking_uri, self.run_id, self.storage_url = tracking_uri, run_id, storage_url
        self.keep_evaluated = keep_evaluated  # evaluated.keep_evaluated for evaluated checkpoints (registration)
        self._outbox: Outbox | None = None  # made on the controller (a thread does not pickle)
        self._timeline = Timeline()
        self._timeline_loaded = False  # what the run recorded before is merged in once MLflow answers
        self._timeline_dirty = False

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0] if metrics else {}
        step, ts = int(m.get("step", 0)), int(time.time() * 1000)
        if self._outbox is None:
            quick_requests()
            self._outbox = Outbox(self.tracking_uri, self.run_id)
        self._merge_recorded_timeline()
        if self._timeline.observe(m, time.time()) is not None:
            self._timeline_dirty = True
        batch = [Metric(k, float(v), ts, step) for k, v in m.items() if isinstance(v, (int, float))]
        tags = {}
        if checkpoint is not None:
            tags = {CHECKPOINT_TAG: checkpoint_uri(self.storage_url, checkpoint.path),
                    CHECKPOINT_STEP_TAG: str(checkpoint_step(checkpoint.path))}
            self._copy_grid(checkpoint)
            tags.update(self._evaluated_entry(checkpoint, m))
        self._outbox.put(batch + self._timeline_metrics(ts, step), tags, self._timeline_text())
        if m.get("stopped") or step >= int(m.get("total_steps", step + 1)):  # the last report
            self._outbox.drain(PATIENCE_S)  # the run is complete before fit() returns
            if not self._timeline_loaded:  # MLflow came back after the last report that could read it
                self._merge_recorded_timeline()
                self._outbox.put(self._timeline_metrics(ts, step), {}, self._timeline_text())
                self._outbox.drain(PATIENCE_S)

    def _timeline_metrics(self, ts: int, step: int) -> list[Metric]:
        """The timeline's counts when it changed (and is complete: merged with what the run recorded)."""
        if not (self._timeline_dirty and self._timeline_loaded):
            return []
        return [Metric(k, float(v), ts, step) for k, v in self._timeline.counts().items()]

    def _timeline_text(self) -> dict[str, str]:
        if not (self._timeline_dirty and self._timeline_loaded):
            return {}
        self._timeline_dirty = False
        return {TIMELINE_ARTIFACT: json.dumps(self._timeline.events, indent=2)}

    def _merge_recorded_timeline(self) -> None:
        """Reads the run's earlier timeline once; while MLflow is away it is read later and merged in front."""
        if self._timeline_loaded or self._outbox.away():
            return
        try:
            last_step, events = self._recorded_timeline()
        except Exception as err:  # noqa: BLE001 - unreachable: the outbox notices too; try again later
            log.warning("preemption timeline not read yet (%s); merged once MLflow answers", type(err).__name__)
            return
        if not self._timeline.events and self._timeline.max_step == 0:
            self._timeline = Timeline(last_step, events)
        else:
            self._timeline.events[:0] = events
            self._timeline_dirty = True
        self._timeline_loaded = True

    def _recorded_timeline(self) -> tuple[int, list[dict[str, Any]]]:
        client = MlflowClient(self.tracking_uri)
        last_step = int(client.get_run(self.run_id).data.metrics.get("step", 0))
        if TIMELINE_ARTIFACT not in {a.path for a in client.list_artifacts(self.run_id)}:
            return last_step, []  # a new run
        with tempfile.TemporaryDirectory(prefix="ganray-timeline-") as d:
            return last_step, json.loads(Path(client.download_artifacts(self.run_id, TIMELINE_ARTIFACT, d)).read_text())

    def _evaluated_entry(self, checkpoint, m: dict[str, Any]) -> dict[str, str]:
        """With registry.register best|every, an evaluated checkpoint (its report carries ``eval_settings``) is
        copied outside Ray Train's rotation and recorded in the run (a tag) for the driver's registrar."""
        if not (self.keep_evaluated and "eval_settings" in m):
            return {}
        from orchestrator.controller.evaluated import keep_evaluated

        tag, entry = keep_evaluated(checkpoint, m, self.storage_url, self.run_id)
        return {tag: entry}

    def _copy_grid(self, checkpoint) -> None:
        """A local copy of the checkpoint's grid under its MLflow name (a grid is nice to have, never a failure)."""
        local = self._outbox.stage(grid_name(checkpoint_step(checkpoint.path)))
        try:
            with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/{GRID_FILE}") as src, \
                    open(local, "wb") as dst:
                dst.write(src.read())
        except Exception as err:  # noqa: BLE001
            log.warning("no sample grid for %s: %s", checkpoint.path, type(err).__name__)
            self._outbox.unstage(local)
            return
        self._outbox.put_file(local, "samples")

    def __del__(self):  # the controller going away takes the folder of unsent grids with it
        if getattr(self, "_outbox", None) is not None:
            self._outbox.close()
