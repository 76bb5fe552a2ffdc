"""A benchmark's private GANRAY_HOME (and work folder): the environment pointed at it, every endpoint
variable of the caller's cluster removed, and both folders removed after. SIGTERM raises SystemExit while
it is open, so a benchmark stopped by a signal runs its ``finally`` blocks (its stack goes down) as
Ctrl-C does."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ENDPOINT_VARS = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


@contextlib.contextmanager
def private_home(prefix: str) -> Iterator[tuple[Path, Path]]:
    """(home, work): two fresh folders under /tmp named prefix-* and prefix-w-*; GANRAY_HOME is home,
    GANRAY_CACHE_DIR work/cache."""
    home = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}w-", dir="/tmp"))
    os.environ.update(GANRAY_HOME=str(home), GANRAY_CACHE_DIR=str(work / "cache"),
                      MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    for var in ENDPOINT_VARS:
        os.environ.pop(var, None)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield home, work
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
