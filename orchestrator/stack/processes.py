"""Processes and ports of the local stack (and of the test clusters): free ports, process groups
stopped by PID, and the processes that left a service's group, found from what was recorded.

Every service the stack starts is the leader of its own process group (``start_new_session``), so
stopping it is a signal to that group: SIGTERM, then SIGKILL after a grace. Ray's workers leave the
group (each leads a group of its own), and a job's driver starts a session of its own. Those are
found from records, never from other processes' command lines: the PIDs in the names of the log
files Ray writes under its temp dir (:func:`ray_recorded_pids`) and the descendants of a recorded
process taken before it is stopped (:func:`descendants`). A candidate is signalled only once
:func:`owned` says it is still ours (:class:`Owner`): our user, started no earlier than the service,
with the service's marker (``NAME=VALUE``, inherited from the service we started) in its environment.
A process of another user is never signalled, and a refusal by the kernel is never an error.
``tests/cluster.py`` stops its Ray nodes with the same functions.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PROC = Path("/proc")
START_SLACK_S = 2.0  # /proc's boot time has whole seconds
# worker-<id>-<job>-<pid>.out|.err and python-core-worker|driver-<id>_<pid>.log, in each session's logs/
_RAY_LOG_PID = re.compile(r"^(?:worker-[0-9a-f]+-[0-9a-f]+-(\d+)\.(?:out|err)|"
                          r"python-core-(?:worker|driver)-[0-9a-f]+_(\d+)\.log)$")


@dataclass(frozen=True)
class Owner:
    """What a process of ours has: marker (``NAME=VALUE``) in its environment (None: a record from before
    markers, checked by user alone), and a start no earlier than since (epoch seconds)."""
    marker: str | None
    since: float = 0.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def free_port(avoid: set[int] | frozenset[int] = frozenset()) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def port_free(port: int) -> bool:
    """Whether a server could bind port now (as servers do, past connections in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM to the group, SIGKILL after timeout; a group the kernel refuses us is not ours: left alone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not group_alive(pgid) or not group_has_live_member(pgid):
                return
            time.sleep(0.2)


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), None when there is no such process."""
    try:
        return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _parents(proc: Path = PROC) -> dict[int, int]:
    """pid -> parent pid of every live process."""
    out = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name), proc)
            if fields and fields[0] != "Z":
                out[int(entry.name)] = int(fields[1])
    return out


def group_members(pgid: int, proc: Path = PROC) -> list[int]:
    members = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name), proc)
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def group_has_live_member(pgid: int) -> bool:
    return bool(group_members(pgid))


def process_start(pid: int, proc: Path = PROC) -> float | None:
    """When pid started (epoch seconds, to about a second), None when there is no such process."""
    fields = _stat_fields(pid, proc)
    if not fields:
        return None
    try:
        btime = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _uids(pid: int, proc: Path) -> tuple[int, int] | None:
    try:
        line = next(row for row in (proc / str(pid) / "status").read_text().splitlines() if row.startswith("Uid:"))
    except (OSError, StopIteration):
        return None
    real, effective = line.split()[1:3]
    return int(real), int(effective)


def owned(pid: int, owner: Owner, proc: Path = PROC) -> bool:
    """Whether pid is a live process of ours by owner's record (module doc); never raises."""
    fields = _stat_fields(pid, proc)
    if not fields or fields[0] == "Z" or pid == os.getpid():
        return False
    if _uids(pid, proc) != (os.getuid(), os.getuid()):
        return False
    started = process_start(pid, proc)
    if started is None or started < owner.since - START_SLACK_S:
        return False
    if owner.marker is None:
        return True
    try:
        environ = (proc / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    return owner.marker.encode() in environ


def ray_recorded_pids(temp_root: str | Path) -> set[int]:
    """The PIDs of the workers and drivers Ray recorded in the names of its log files under temp_root."""
    pids = set()
    for logs in Path(temp_root).glob("session_*/logs"):
        try:
            names = [p.name for p in logs.iterdir()]
        except OSError:
            continue
        for name in names:
            m = _RAY_LOG_PID.match(name)
            if m:
                pids.add(int(m.group(1) or m.group(2)))
    return pids


def descendants(pids: Iterable[int], proc: Path = PROC) -> set[int]:
    """Every live process below pids (children, their children, ...), not pids themselves."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents(proc).items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def select_strays(candidates: Iterable[int], owner: Owner, proc: Path = PROC) -> list[int]:
    """The candidates that are still processes of ours by owner's record (sorted)."""
    return sorted(pid for pid in set(candidates) if owned(pid, owner, proc))


def stop_strays(pids: Iterable[int], owner: Owner) -> list[int]:
    """SIGKILL to each of pids still ours (checked again now), or to the group it leads; returns those
    signalled. Our own process group is never signalled; a refusal by the kernel is skipped."""
    signalled = []
    for pid in select_strays(pids, owner):
        try:
            lead = os.getpgid(pid) == pid and pid != os.getpgrp()
            (os.killpg if lead else os.kill)(pid, signal.SIGKILL)
            signalled.append(pid)
        except (ProcessLookupError, PermissionError):  # gone, or not ours to stop
            continue
    return signalled
