"""The live progress line of a job on stderr, and the local record's step, read from its MLflow run."""
from __future__ import annotations

import logging
import sys
import threading
import time

from orchestrator.job import host_record

log = logging.getLogger("ganray.progress")


class Progress:
    """Every few seconds: the run's metrics into the local record (a cache: step and counts, never the
    state) and, when enabled, a progress line on stderr."""

    def __init__(self, client, run_id: str, name: str, total: int, enabled: bool = True, every_s: float = 2.0):
        self.client, self.run_id, self.name, self.total, self.enabled = client, run_id, name, total, enabled
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tty = sys.stderr.isatty()
        self._last_print = 0.0
        self._failing: str | None = None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        if self.enabled and self._tty:
            sys.stderr.write("\n")

    def _loop(self) -> None:
        """Never ends before the job: a tracking server that went away, a record that cannot be written or
        a closed stderr costs a line (noted once), not the thread."""
        while not self._stop.wait(self.every_s):
            try:
                self._tick()
                self._failing = None
            except Exception as err:  # noqa: BLE001 - progress is best effort
                if self._failing != type(err).__name__:
                    log.warning("progress not updated (%s); training goes on", type(err).__name__)
                self._failing = type(err).__name__

    def _tick(self) -> None:
        m = self.client.get_run(self.run_id).data.metrics
        if "total_steps" in m:
            step = int(m.get("step", 0))
            host_record.write_record(self.name, step=step, preemptions=int(m.get("preemptions", 0)),
                              failures=int(m.get("failures", 0)), steps_lost=int(m.get("steps_lost_total", 0)))
            if self.enabled:
                self._print(step, m)

    def _print(self, step: int, m: dict) -> None:
        ips = m.get("img_per_sec", 0.0)
        left = (self.total - step) * (m.get("images_seen", 0) / max(step, 1)) / max(ips, 1e-9)
        line = (f"{self.name}: step {step}/{self.total} | {ips:,.0f} img/s | loss_d {m.get('loss_d', 0):.3f} "
                f"loss_g {m.get('loss_g', 0):.3f} | data wait {m.get('data_wait_frac', 0):.0%} | "
                f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}")
        if self._tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
        elif time.monotonic() - self._last_print > 10:
            sys.stderr.write(line + "\n")
            self._last_print = time.monotonic()
