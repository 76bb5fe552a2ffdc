"""The embedded local stack: a Ray head, an MLflow server, and object storage.

All state lives under ``$GANRAY_HOME`` (0700, as are its ``mlflow/``, ``storage/``, ``logs/``
and ``ray/``; ``orchestrator/stack/private_files.py`` keeps them private):

- ``stack.json``: the services we started (PID, start time, port, log file, marker); only ours are
  stopped (see "Stopping" below).
- ``profile.json``: endpoints the other commands use (no secrets).
- ``credentials.json`` (0600): the local S3 server's keys and, with authentication, MLflow's admin
  login; ``ray/auth_token`` (0600).
- ``mlflow/``: the tracking database and artifacts, so registered models survive restarts;
  with authentication also the auth app's configuration and user store.
- ``storage/``: the default object storage, a folder reached through fsspec.

MLflow runs its basic-auth app unless asked not to (``auth=False``): a new home, or a stopped one,
starts with it, and once on it stays on; a home whose MLflow already runs without it keeps running
so until ``down`` (:meth:`LocalStack.up`).

With ``s3=True`` a moto S3 server on loopback is started as well and the defaults point at
it; it keeps objects in memory only while it runs, and logs no query strings
(``orchestrator/stack/s3_server.py``). It checks no signatures: every local user can read, write
and delete its objects (moto's IAM mode refuses presigned GETs, and its ``/moto-api/`` turns it off
for anyone), which ``local up`` and the README say. Ports are picked free and then used; a service
that finds its port taken in between is started again on fresh ports (up to :data:`PORT_ATTEMPTS`).

Stopping: every service leads its own process group and carries a random marker
(``ganray_stack_run=...``, :data:`MARKER_VARIABLE`) in its environment, which its children inherit.
A service is signalled only while its PID is still that process (our user, started when we
started it, the marker in its environment: ``processes.owned``); a stale record whose PID now
belongs to someone else is left alone. Ray's workers and job drivers leave the Ray group: ``down``
finds them from the PIDs Ray writes into its log file names under the stack's private temp dir and
from the descendants of the Ray head and of those, and stops those that carry the Ray service's
marker: never a process found by its command line (a ``tail -f`` of a Ray log survives).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from orchestrator.stack import private_files
from orchestrator.stack.processes import (Owner, descendants, free_port, group_members, owned, pid_alive, port_free,
                                          ray_recorded_pids, select_strays, stop_group, stop_strays)
from orchestrator.tracking_server import QUICK_REQUESTS
from trainers.errors import GanrayError
from trainers.settings import ganray_home

LOCAL_BUCKET = "ganray"
MARKER_VARIABLE = "ganray_stack_run"  # a marker in the services' environments, not a setting
PORT_ATTEMPTS = 4
SILENT_ATTEMPTS = 2  # start_service's tries of a service that exits without writing a line
RAY_PORTS = ("gcs", "dashboard", "node_manager", "object_manager", "client", "metrics", "agent_grpc",
             "agent_http", "runtime_env_agent")
_PORT_TAKEN = re.compile(r"address already in use|errno 98|port .{0,40}(already in use|not available)|"
                         r"failed to bind|bind.{0,40}failed", re.IGNORECASE)
log = logging.getLogger("ganray.stack")


class StackError(GanrayError, RuntimeError):
    """A service of the local stack could not be started or reached."""


class SilentExit(StackError):
    """A service exited while starting without writing a line: killed, most likely; worth one more try."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def _again_or_raise(err: SilentExit, attempt: int, attempts: int) -> None:
    """After a silent exit on try attempt of attempts: a StackError saying so on the last, else a warning."""
    if attempt >= attempts:
        raise StackError(f"{err} (after {attempt} attempts)") from None
    log.warning("%s; starting it again", err)


class PortTaken(StackError):
    """A service found one of the ports picked for it taken by someone else when it started."""

    def __init__(self, name: str, ports: set[int], message: str):
        super().__init__(message)
        self.name, self.ports = name, ports


@dataclass
class Service:
    name: str
    pid: int
    port: int
    log: str
    log_offset: int = 0  # where this start's lines begin in log
    started: float = 0.0  # epoch seconds, taken just before the start (0: a record from before markers)
    marker: str = ""  # MARKER_VARIABLE=... in its environment ("": a record from before markers)

    def owner(self) -> Owner:
        """What this service's processes (and their children) have: its marker, a start after it."""
        return Owner(self.marker or None, self.started)

    def alive(self) -> bool:
        """Whether its PID is still the process we started (not a reused PID, not another user's)."""
        return pid_alive(self.pid) and owned(self.pid, self.owner())

    def group_ours(self) -> bool:
        """Whether it, or a process of ours in the group it led, still runs (what stopping it signals)."""
        return self.alive() or any(owned(pid, self.owner()) for pid in group_members(self.pid))


def check_database(path: Path) -> None:
    """StackError naming path when it is there but SQLite cannot open it as a database: MLflow would retry
    for about 100 s before it exits (its engine retries ten times, doubling the wait)."""
    import sqlite3

    if not path.exists():
        return
    try:
        if not path.is_file():
            raise sqlite3.DatabaseError("it is not a file")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5)) as db:
            db.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise StackError(f"mlflow cannot start: its database {path} cannot be opened ({err}); move it away to "
                         "start with an empty tracking server, or restore it from a backup") from None


def ray_temp_dir(home: Path) -> str:
    """A short, private (0700) folder for Ray's temp dir (its Unix sockets fail past ~107 characters)."""
    return f"/tmp/ganray-{hashlib.sha1(str(home).encode()).hexdigest()[:10]}"


def ray_session_root(home: Path) -> str:
    """Ray's temp dir itself, inside :func:`ray_temp_dir`: Ray makes its temp dir world-writable (0777)
    as it starts, so the private folder around it is what keeps others out."""
    return f"{ray_temp_dir(home)}/r"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _since(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(path: str, offset: int = 0, lines: int = 25) -> str:
    return "\n".join(_since(path, offset).splitlines()[-lines:]) or "(no log)"


class LocalStack:
    """Starts, describes and stops the embedded stack of one ``GANRAY_HOME``."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else ganray_home()
        self.state_file = self.home / "stack.json"
        self.profile_file = self.home / "profile.json"
        self.logs = self.home / "logs"
        # Test hook: called with (service, {role: port}) after its ports are picked, before it starts.
        self.port_hook: Callable[[str, dict[str, int]], None] | None = None
        self._avoid: set[int] = set()  # ports found taken by others during this up
        # The services this object started, by PID: while unreaped, their PIDs cannot be reused, so
        # Popen.poll() says whether each still runs and how it ended (what /proc can only guess at).
        self._children: dict[int, subprocess.Popen] = {}

    # -- state -----------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def services(self) -> dict[str, Service]:
        return {k: Service(**v) for k, v in self._state().get("services", {}).items()}

    def _save(self, services: dict[str, Service], ray_ports: dict[str, int] | None = None) -> None:
        state = self._state()
        ports = {**state.get("ports", {}), **{k: v.port for k, v in services.items()}}
        state.update(services={k: vars(v) for k, v in services.items()}, ports=ports)
        if ray_ports is not None:
            state["ray_ports"] = ray_ports
        self.state_file.write_text(json.dumps(state, indent=2))

    def profile(self) -> dict[str, Any]:
        try:
            return json.loads(self.profile_file.read_text())
        except FileNotFoundError:
            return {}

    def _port(self, name: str, avoid: set[int]) -> int:
        prev = self._state().get("ports", {}).get(name)
        return prev if prev and prev not in avoid and port_free(prev) else free_port(avoid)

    def credentials(self) -> dict[str, str]:
        """The stack's credentials: S3 keys, MLflow login ({} when it has none yet)."""
        return private_files.read_credentials(self.home)

    def auth(self) -> bool:
        """Whether this stack runs MLflow with authentication (once started so, always so)."""
        return (self.home / "mlflow" / "basic_auth.ini").exists()

    def auth_for(self, wanted: bool | None, mlflow_running: bool) -> bool:
        """Whether MLflow runs with authentication after an ``up`` that asked for wanted (see up)."""
        if self.auth():
            return True
        if mlflow_running:
            if wanted:
                raise StackError("MLflow already runs without authentication; `ganray local down` first, then "
                                 "`ganray local up`")
            return False
        return wanted is not False

    def ray_env(self) -> dict[str, str]:
        """Environment that makes a process talk to this stack's Ray with its token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.home / "ray" / "auth_token")}

    def prepare(self, s3: bool = False, auth: bool = False) -> None:
        """Private folders and secrets, before any service starts."""
        private_files.private_dir(self.home)
        for sub in ("logs", "mlflow"):
            private_files.private_dir(self.home / sub)
        private_files.ensure_ray_token(self.home)
        if auth and (self.home / "mlflow" / "basic_auth.db").exists() and \
                "mlflow_password" not in private_files.read_credentials(self.home):
            raise StackError(f"MLflow's user store {self.home / 'mlflow' / 'basic_auth.db'} exists but the stack's "
                             f"credentials.json has no login for it; remove the user store to start over")
        private_files.ensure_credentials(self.home, s3=s3, auth=auth)

    # -- lifecycle -------------------------------------------------------
    def up(self, s3: bool = False, auth: bool | None = None, timeout: float = 120.0) -> dict[str, Any]:
        """Starts whatever of the stack is not running; idempotent. Returns the profile (its ``mlflow_auth``
        says how MLflow runs). auth: None (the default) starts MLflow with authentication unless it already
        runs without; False without it (unless this home has it: once on, it stays on); True with it."""
        running = {k: v for k, v in self.services().items() if v.alive()}
        want_s3 = s3 or "s3" in running
        auth = self.auth_for(auth, "mlflow" in running)
        self.prepare(want_s3, auth)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_missing(running, want_s3, auth, timeout)
                break
            except SilentExit as err:
                _again_or_raise(err, attempt, PORT_ATTEMPTS)
            except PortTaken as err:
                if attempt == PORT_ATTEMPTS:
                    raise StackError(f"{err} (after {attempt} attempts on fresh ports)") from None
                log.warning("%s: port(s) %s taken between pick and start; retrying on fresh ports",
                            err.name, ", ".join(map(str, sorted(err.ports))))
                self._avoid |= err.ports
        if want_s3:
            self._ensure_bucket(running["s3"].port)
        else:
            private_files.private_dir(self.home / "storage")
        return self._write_profile(running, self._state()["ray_ports"], auth)

    def _start_missing(self, running: dict[str, Service], s3: bool, auth: bool, timeout: float) -> None:
        """Storage and MLflow first (Ray's environment names their ports), then Ray; running is updated."""
        try:
            first = {}
            if s3 and "s3" not in running:
                first["s3"] = self._start_s3(self._picked("s3", {"s3": self._port("s3", self._avoid)}))
            if "mlflow" not in running:
                first["mlflow"] = self._start_mlflow(self._picked("mlflow", {"mlflow": self._port("mlflow",
                                                                                                  self._avoid)}), auth)
            running.update(first)
            self._wait_ready(running, first, timeout)
            if "ray" not in running:
                ports = self._picked("ray", self._ray_ports())
                self._save(running, ports)
                running["ray"] = self._start_ray(ports, self._write_profile(running, ports, auth))
                self._wait_ready(running, {"ray": running["ray"]}, timeout)
        finally:
            self._save(running)

    def _picked(self, name: str, ports: dict[str, int]) -> dict[str, int]:
        if self.port_hook is not None:
            self.port_hook(name, dict(ports))
        return ports

    def _ray_ports(self) -> dict[str, int]:
        prev = self._state().get("ray_ports", {})
        ports: dict[str, int] = {}
        for n in RAY_PORTS:
            taken = self._avoid | set(ports.values())
            p = prev.get(n)
            ports[n] = p if p and p not in taken and port_free(p) else free_port(taken)
        return ports

    def _spawn(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None) -> Service:
        log_path = self.logs / f"{name}.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        offset = os.lseek(fd, 0, os.SEEK_END)
        marker, started = f"{MARKER_VARIABLE}={secrets.token_hex(8)}", time.time()
        try:
            p = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {}), MARKER_VARIABLE: marker.split("=", 1)[1]},
                                 start_new_session=True, cwd=self.home)
        finally:
            os.close(fd)
        self._children[p.pid] = p
        return Service(name, p.pid, port, str(log_path), offset, started, marker)

    def _ended(self, svc: Service) -> str | None:
        """None while svc still runs; else how it ended ("exit code 1", "killed by SIGKILL"; "" when not
        started by this object, so unknown)."""
        child = self._children.get(svc.pid)
        if child is None:
            return None if svc.alive() else ""
        code = child.poll()
        if code is None:
            return None
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def _start_s3(self, ports: dict[str, int]) -> Service:
        return self._spawn("s3", [sys.executable, "-m", "orchestrator.stack.s3_server", "-H", "127.0.0.1",
                                  "-p", str(ports["s3"])], ports["s3"])

    def _start_mlflow(self, ports: dict[str, int], auth: bool) -> Service:
        root = self.home / "mlflow"
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        check_database(root / "mlflow.db")
        cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]),
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
        # MLflow's job runner (GenAI jobs ganray never submits) would add eight processes per server.
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
               "TMPDIR": str(private_files.private_dir(root / "tmp"))}  # its lock files stay in the stack, not /tmp
        if auth:  # the auth app: its settings and the admin's first password in the environment only
            cmd[2:2] = ["--app-name", "basic-auth"]
            env.update(private_files.auth_env(self.home, private_files.read_credentials(self.home)))
        return self._spawn("mlflow", cmd, ports["mlflow"], env)

    def _start_ray(self, ports: dict[str, int], profile: dict[str, Any]) -> Service:
        from orchestrator.cluster.endpoints import stack_env

        env = {**stack_env(self.home, profile, self.credentials(), ray=False), **self.ray_env(), **QUICK_REQUESTS,
               "GANRAY_HOME": str(self.home), "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [_bin("ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1",
               "--port", str(ports["gcs"]), "--temp-dir", self._private_ray_root(),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(ports["dashboard"]),
               "--node-manager-port", str(ports["node_manager"]),
               "--object-manager-port", str(ports["object_manager"]),
               "--ray-client-server-port", str(ports["client"]),
               "--metrics-export-port", str(ports["metrics"]),
               "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
               "--dashboard-agent-listen-port", str(ports["agent_http"]),
               "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
               "--num-cpus", str(max(2, os.cpu_count() or 2)),
               "--num-gpus", "0"]
        return self._spawn("ray", cmd, ports["gcs"], env)

    def _private_ray_root(self) -> str:
        private_files.private_ray_temp_dir(ray_temp_dir(self.home))
        return ray_session_root(self.home)

    def _wait_ready(self, running: dict[str, Service], services: dict[str, Service], timeout: float) -> None:
        """Until every service in services answers; a dead one is dropped from running and reported
        (PortTaken when its port was taken between pick and start)."""
        deadline = time.time() + timeout
        pending = dict(services)
        while pending:
            for name, svc in list(pending.items()):
                ended = self._ended(svc)
                if ended is not None or _PORT_TAKEN.search(_since(svc.log, svc.log_offset)):
                    running.pop(name, None)
                    self._failed(name, svc, ended or "")
                if self._ready(name, svc):
                    del pending[name]
            if pending and time.time() > deadline:
                name, svc = next(iter(pending.items()))
                raise StackError(f"{name} did not become ready in {timeout:.0f}s; "
                                 f"last lines of {svc.log}:\n{_tail(svc.log, svc.log_offset)}")
            if pending:
                time.sleep(0.5)

    def _failed(self, name: str, svc: Service, ended: str) -> None:
        if svc.group_ours():
            stop_group(svc.pid, 5.0)  # whatever it started before it died
        ports = {svc.port} | (set(self._state().get("ray_ports", {}).values()) if name == "ray" else set())
        text = _since(svc.log, svc.log_offset)
        taken = {p for p in ports if not port_free(p)}
        if _PORT_TAKEN.search(text) or taken:
            raise PortTaken(name, taken or {svc.port}, f"{name} could not bind its port: another process took "
                                                       f"it after it was picked")
        how = f" ({ended})" if ended else ""
        if not text.strip():
            raise SilentExit(name, f"{name} exited while starting{how} without writing to {svc.log}")
        raise StackError(f"{name} exited while starting{how}; last lines of {svc.log}:\n"
                         f"{_tail(svc.log, svc.log_offset)}")

    def _ready(self, name: str, svc: Service) -> bool:
        try:
            if name == "mlflow":
                return requests.get(f"http://127.0.0.1:{svc.port}/health", timeout=2).ok
            if name == "s3":
                return requests.get(f"http://127.0.0.1:{svc.port}/moto-api/", timeout=2).status_code < 500
            if name == "ray":
                return "Ray runtime started" in _since(svc.log, svc.log_offset)
        except (requests.RequestException, OSError):
            return False
        return False

    def _ensure_bucket(self, port: int) -> None:
        import boto3

        from orchestrator.cluster.endpoints import LOCAL_S3_REGION

        creds = self.credentials()
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=LOCAL_S3_REGION,
                          aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"])
        try:
            s3.head_bucket(Bucket=LOCAL_BUCKET)
        except Exception:  # noqa: BLE001 - any miss means: create it
            s3.create_bucket(Bucket=LOCAL_BUCKET)

    def _write_profile(self, running: dict[str, Service], ray_ports: dict[str, int], auth: bool) -> dict[str, Any]:
        s3 = running.get("s3")
        profile = {
            "ray_address": f"127.0.0.1:{ray_ports['gcs']}",
            "dashboard_url": f"http://127.0.0.1:{ray_ports['dashboard']}",
            "mlflow_uri": f"http://127.0.0.1:{running['mlflow'].port}" if "mlflow" in running else None,
            "mlflow_auth": auth,
            "s3_endpoint": f"http://127.0.0.1:{s3.port}" if s3 else None,
            "storage_root": f"s3://{LOCAL_BUCKET}" if s3 else str(self.home / "storage"),
            "ray_temp_dir": ray_session_root(self.home),
        }
        self.profile_file.write_text(json.dumps(profile, indent=2))
        return profile

    # -- one service -----------------------------------------------------
    def stop_service(self, name: str, timeout: float = 30.0) -> Service:
        """Stops one service of the stack by PID and process group; it keeps its port for start_service."""
        services = self.services()
        if name not in services:
            raise StackError(f"the stack has no {name} service")
        if services[name].group_ours():
            stop_group(services[name].pid, timeout)
        return services[name]

    def start_service(self, name: str, timeout: float = 120.0) -> Service:
        """Starts a stopped service again on the port it had (MLflow or S3; Ray needs `local down/up`)."""
        services = self.services()
        if name not in ("mlflow", "s3") or name not in services:
            raise StackError(f"cannot start {name!r} alone: only the stack's mlflow and s3 services can be")
        if services[name].alive():
            return services[name]
        port = services[name].port
        if not port_free(port):
            raise StackError(f"{name}'s port {port} is taken by another process")
        for attempt in itertools.count(1):
            svc = self._start_mlflow({"mlflow": port}, self.auth()) if name == "mlflow" else \
                self._start_s3({"s3": port})
            services[name] = svc
            self._save(services)
            try:
                self._wait_ready(services, {name: svc}, timeout)
                return svc
            except SilentExit as err:
                _again_or_raise(err, attempt, SILENT_ATTEMPTS)

    def restart(self, name: str, timeout: float = 120.0) -> Service:
        self.stop_service(name)
        return self.start_service(name, timeout)

    def down(self, timeout: float = 30.0) -> list[str]:
        """Stops exactly the processes this stack started (module doc, "Stopping")."""
        stopped = []
        services = self.services()
        ray = services.get("ray")
        strays = self.ray_strays()  # before the head goes: whom it started
        # Ray first: its workers may still talk to the others.
        for name in sorted(services, key=lambda n: n != "ray"):
            svc = services[name]
            if svc.group_ours():
                # `ray start --block` spends ~30 s on a graceful SIGTERM; a local head
                # has nothing to save, so it gets a short grace before SIGKILL.
                stop_group(svc.pid, min(timeout, 5.0) if name == "ray" else timeout)
                stopped.append(name)
        if ray:
            stop_strays(strays, self._stray_owner(ray))
        if self.state_file.exists():
            self._save({})
        shutil.rmtree(ray_temp_dir(self.home), ignore_errors=True)
        return stopped

    def ray_strays(self) -> list[int]:
        """The live processes of the Ray head (module doc, "Stopping"): the PIDs Ray recorded under the
        stack's temp dir and the descendants of the head and of those, each with the head's marker."""
        ray = self.services().get("ray")
        if ray is None:
            return []
        owner = self._stray_owner(ray)
        recorded = {pid for pid in ray_recorded_pids(ray_session_root(self.home)) if owned(pid, owner)}
        return select_strays(recorded | descendants(recorded | ({ray.pid} if ray.alive() else set())), owner)

    def _stray_owner(self, ray: Service) -> Owner:
        """The Ray head's marker; for a record from before markers, its Ray token path (set for it alone)."""
        if ray.marker:
            return ray.owner()
        return Owner(f"RAY_AUTH_TOKEN_PATH={self.ray_env()['RAY_AUTH_TOKEN_PATH']}", ray.started)

    def status(self) -> dict[str, Any]:
        """What runs where: per service, pid, port, alive."""
        return {
            "home": str(self.home),
            "services": {k: {"pid": v.pid, "port": v.port, "alive": v.alive(), "log": v.log}
                         for k, v in self.services().items()},
            "profile": self.profile(),
        }
