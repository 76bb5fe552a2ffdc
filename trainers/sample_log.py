"""Test hook inside workers: with ``GANRAY_SAMPLE_LOG=DIR`` each rank logs the sample keys of every step.

The chaos tests and the recovery benchmark read these logs to check that no sample is
trained on twice within an epoch across preemptions and restarts. Unset, nothing is written.
"""
from __future__ import annotations

import os
from typing import TextIO

from trainers import settings


def open_sample_log(job: str, rank: int) -> TextIO | None:
    """A line-buffered file DIR/{job}-rank{rank}-{pid}.jsonl to append one JSON line per step to, or None
    when GANRAY_SAMPLE_LOG is not set (the job's name in it: the jobs of one cluster share the folder)."""
    root = settings.get("GANRAY_SAMPLE_LOG")
    if not root:
        return None
    os.makedirs(root, exist_ok=True)
    return open(os.path.join(root, f"{job}-rank{rank}-{os.getpid()}.jsonl"), "a", buffering=1)
