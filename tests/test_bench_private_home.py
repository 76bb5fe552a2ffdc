"""bench/private_home.py: a benchmark stopped by SIGTERM still runs its cleanup and leaves no folder."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from bench.private_home import private_home
with private_home("gbt") as (home, work):
    try:
        print(home, work, flush=True)
        time.sleep(60)
    finally:
        (work.parent / (work.name + ".cleaned")).write_text("yes")  # what a stack.down() would do
"""


def test_sigterm_runs_the_benchmarks_finally_and_removes_its_folders(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT)], stdout=subprocess.PIPE, text=True)
    home, work = map(Path, proc.stdout.readline().split())
    marker = work.parent / (work.name + ".cleaned")
    try:
        assert home.is_dir() and work.is_dir()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert marker.read_text() == "yes" and not home.exists() and not work.exists()
    finally:
        proc.kill()
        marker.unlink(missing_ok=True)
