"""The Ray Train controller callback: rank 0's reports, checkpoints, grids and the timeline into the job's run.

Ray Train calls ``after_report`` on its controller once per report; this is the one
place a job is logged to MLflow from. What cannot reach MLflow (a server that went
away) is kept and sent with a later report, so training never waits on tracking and
nothing is lost. The callback never writes the job's state: ``lifecycle`` does.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.train.v2.api.callback import UserCallback

from orchestrator.runs import CHECKPOINT_STEP_TAG, CHECKPOINT_TAG
from orchestrator.storage import checkpoint_uri
from orchestrator.timeline import Timeline
from trainers.checkpoint import GRID_FILE, checkpoint_step, grid_name

log = logging.getLogger("ganray.report_callback")
TIMELINE_ARTIFACT = "preemptions.json"


class MlflowReportCallback(UserCallback):
    """Logs rank 0's metrics, each checkpoint's URI and sample grid, and the preemption timeline."""

    def __init__(self, tracking_uri: str, run_id: str, storage_url: str, keep_evaluated: bool = False):
        self.tracking_uri, self.run_id, self.storage_url = tracking_uri, run_id, storage_url
        self.keep_evaluated = keep_evaluated  # registry.register best|every: evaluated checkpoints are kept
        self._pending: list[Metric] = []
        self._pending_tags: dict[str, str] = {}
        self._grids: list[str] = []  # local copies waiting for upload, in this callback's own folder
        self._grid_dir: str | None = None
        self._timeline: Timeline | None = None
        self._timeline_dirty = False

    def _load_timeline(self) -> Timeline:
        last_step, events = 0, []
        try:
            import mlflow.artifacts

            last_step = int(MlflowClient(self.tracking_uri).get_run(self.run_id).data.metrics.get("step", 0))
            events = json.loads(mlflow.artifacts.load_text(f"runs:/{self.run_id}/{TIMELINE_ARTIFACT}"))
        except Exception:  # noqa: BLE001 - a new run has neither
            pass
        return Timeline(last_step, events)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0] if metrics else {}
        step, ts = int(m.get("step", 0)), int(time.time() * 1000)
        if self._timeline is None:
            self._timeline = self._load_timeline()
        if self._timeline.observe(m, time.time()) is not None:
            self._timeline_dirty = True
            self._pending += [Metric(k, float(v), ts, step) for k, v in self._timeline.counts().items()]
        self._pending += [Metric(k, float(v), ts, step) for k, v in m.items() if isinstance(v, (int, float))]
        if checkpoint is not None:
            self._pending_tags[CHECKPOINT_TAG] = checkpoint_uri(self.storage_url, checkpoint.path)
            self._pending_tags[CHECKPOINT_STEP_TAG] = str(checkpoint_step(checkpoint.path))
            self._copy_grid(checkpoint)
            self._pending_tags.update(self._evaluated_entry(checkpoint, m))
        try:
            self._flush(MlflowClient(self.tracking_uri))
        except Exception as err:  # noqa: BLE001 - keep training; retry with the next report
            log.warning("MLflow unreachable, keeping %d metrics and %d grids for later: %s",
                        len(self._pending), len(self._grids), type(err).__name__)

    def _flush(self, c: MlflowClient) -> None:
        for i in range(0, len(self._pending), 500):
            c.log_batch(self.run_id, metrics=self._pending[i:i + 500])
        self._pending = []
        for k in list(self._pending_tags):
            c.set_tag(self.run_id, k, self._pending_tags.pop(k))
        while self._grids:
            c.log_artifact(self.run_id, self._grids[0], "samples")
            os.remove(self._grids.pop(0))
        if self._timeline_dirty:
            c.log_text(self.run_id, json.dumps(self._timeline.events, indent=2), TIMELINE_ARTIFACT)
            self._timeline_dirty = False
        self._remove_grid_dir()

    def _evaluated_entry(self, checkpoint, m: dict[str, Any]) -> dict[str, str]:
        """With registry.register best|every, an evaluated checkpoint (its report carries ``eval_settings``) is
        copied outside Ray Train's rotation and recorded in the run (a tag) for the driver's registrar."""
        if not (self.keep_evaluated and "eval_settings" in m):
            return {}
        from orchestrator.registrar import keep_evaluated

        tag, entry = keep_evaluated(checkpoint, m, self.storage_url)
        return {tag: entry}

    def _copy_grid(self, checkpoint) -> None:
        """A local copy of the checkpoint's grid under its MLflow name (a grid is nice to have, never a failure)."""
        try:
            if self._grid_dir is None:
                self._grid_dir = tempfile.mkdtemp(prefix="ganray-grid-")
            local = os.path.join(self._grid_dir, grid_name(checkpoint_step(checkpoint.path)))
            with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/{GRID_FILE}") as src, \
                    open(local, "wb") as dst:
                dst.write(src.read())
            self._grids.append(local)
        except Exception as err:  # noqa: BLE001
            log.warning("no sample grid for %s: %s", checkpoint.path, type(err).__name__)

    def _remove_grid_dir(self) -> None:
        if self._grid_dir is not None and not self._grids:
            shutil.rmtree(self._grid_dir, ignore_errors=True)
            self._grid_dir = None

    def __del__(self):  # the controller going away takes its folder with it
        if self._grid_dir is not None:
            shutil.rmtree(self._grid_dir, ignore_errors=True)
