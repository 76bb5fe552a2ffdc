"""What several commands share: stdout kept for results, usage errors."""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def stdout_to_stderr():
    """Sends everything written to fd 1 (Ray, MLflow, C++ logs) to stderr, so stdout carries only results."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
