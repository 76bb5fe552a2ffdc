"""The embedded local stack: a Ray head, an MLflow server, and object storage.

All state lives under ``$GANRAY_HOME``:

- ``stack.json``: the services we started (PID, port, log file); only ours are stopped.
- ``profile.json``: endpoints the other commands use (no secrets).
- ``credentials.json`` (0600): the local S3 server's keys; ``ray/auth_token`` (0600).
- ``mlflow/``: the tracking database and artifacts, so registered models survive restarts.
- ``storage/``: the default object storage, a folder reached through fsspec.

With ``s3=True`` a moto S3 server on loopback is started as well and the
defaults point at it; it keeps objects in memory only while it runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from trainers.errors import GanrayError
from trainers.settings import ganray_home

LOCAL_BUCKET = "ganray"


class StackError(GanrayError, RuntimeError):
    """A service of the local stack could not be started or reached."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    log: str

    def alive(self) -> bool:
        return pid_alive(self.pid)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ray_temp_dir(home: Path) -> str:
    """A short, private temp dir for Ray (its Unix sockets fail past ~107 characters)."""
    return f"/tmp/ganray-{hashlib.sha1(str(home).encode()).hexdigest()[:10]}"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _tail(path: str, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalStack:
    """Starts, describes and stops the embedded stack of one ``GANRAY_HOME``."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else ganray_home()
        self.state_file = self.home / "stack.json"
        self.profile_file = self.home / "profile.json"
        self.logs = self.home / "logs"

    # -- state -----------------------------------------------------------
    def services(self) -> dict[str, Service]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        return {k: Service(**v) for k, v in raw.get("services", {}).items()}

    def _save(self, services: dict[str, Service], extra: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        state = {"services": {k: vars(v) for k, v in services.items()}, **extra}
        self.state_file.write_text(json.dumps(state, indent=2))

    def profile(self) -> dict[str, Any]:
        try:
            return json.loads(self.profile_file.read_text())
        except FileNotFoundError:
            return {}

    def _previous_port(self, name: str) -> int | None:
        try:
            return json.loads(self.state_file.read_text())["ports"].get(name)
        except (FileNotFoundError, KeyError, ValueError):
            return None

    def _port(self, name: str) -> int:
        prev = self._previous_port(name)
        return prev if prev and port_free(prev) else free_port()

    def credentials(self) -> dict[str, str]:
        """The local S3 server's keys ({} when it has none yet)."""
        try:
            return json.loads((self.home / "credentials.json").read_text())
        except FileNotFoundError:
            return {}

    def ray_env(self) -> dict[str, str]:
        """Environment that makes a process talk to this stack's Ray with its token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.home / "ray" / "auth_token")}

    def _ensure_secrets(self, s3: bool) -> None:
        token = self.home / "ray" / "auth_token"
        token.parent.mkdir(parents=True, exist_ok=True)
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        creds = self.home / "credentials.json"
        if s3 and not creds.exists():
            creds.write_text(json.dumps({"access_key": "ganray" + secrets.token_hex(6),
                                         "secret_key": secrets.token_urlsafe(24)}))
            creds.chmod(0o600)

    # -- lifecycle -------------------------------------------------------
    def up(self, s3: bool = False, timeout: float = 120.0) -> dict[str, Any]:
        """Starts whatever of the stack is not running; idempotent. Returns the profile."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        running = {k: v for k, v in self.services().items() if v.alive()}
        want_s3 = s3 or "s3" in running
        self._ensure_secrets(want_s3)
        ports = {k: v.port for k, v in running.items()}
        try:
            if want_s3 and "s3" not in running:
                running["s3"] = self._start_s3(self._port("s3"))
                ports["s3"] = running["s3"].port
            if "mlflow" not in running:
                running["mlflow"] = self._start_mlflow(self._port("mlflow"))
                ports["mlflow"] = running["mlflow"].port
            extra = self._ray_ports(running)
            if "ray" not in running:
                profile = self._write_profile(running, extra)
                running["ray"] = self._start_ray(extra, profile)
            self._save(running, {"ports": {**ports, "ray": running["ray"].port}, "ray_ports": extra})
            self._wait_ready(running, timeout)
        except BaseException:
            self._save(running, {"ports": ports, "ray_ports": self._ray_ports(running)})
            raise
        if want_s3:
            self._ensure_bucket(running["s3"].port)
        else:
            (self.home / "storage").mkdir(exist_ok=True)
        return self._write_profile(running, self._ray_ports(running))

    def _ray_ports(self, running: dict[str, Service]) -> dict[str, int]:
        if "ray" in running:
            try:
                return json.loads(self.state_file.read_text())["ray_ports"]
            except (KeyError, ValueError, FileNotFoundError):
                pass
        names = ["gcs", "dashboard", "node_manager", "object_manager", "client",
                 "metrics", "agent_grpc", "agent_http", "runtime_env_agent"]
        prev = {}
        try:
            prev = json.loads(self.state_file.read_text()).get("ray_ports", {})
        except (ValueError, FileNotFoundError):
            pass
        return {n: (prev[n] if prev.get(n) and port_free(prev[n]) else free_port()) for n in names}

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        fh = open(log, "ab")
        full_env = {**os.environ, **(env or {})}
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, start_new_session=True, cwd=self.home)

    def _start_s3(self, port: int) -> Service:
        p = self._spawn("s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)])
        return Service("s3", p.pid, port, str(self.logs / "s3.log"))

    def _start_mlflow(self, port: int) -> Service:
        root = self.home / "mlflow"
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
        p = self._spawn("mlflow", cmd)
        return Service("mlflow", p.pid, port, str(self.logs / "mlflow.log"))

    def _start_ray(self, ports: dict[str, int], profile: dict[str, Any]) -> Service:
        from orchestrator.environment import stack_env

        creds = self.credentials() if profile.get("s3_endpoint") else None
        env = {**stack_env(self.home, profile, creds, ray=False), **self.ray_env(), "GANRAY_HOME": str(self.home),
               "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [_bin("ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1",
               "--port", str(ports["gcs"]), "--temp-dir", ray_temp_dir(self.home),
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
        p = self._spawn("ray", cmd, env)
        return Service("ray", p.pid, ports["gcs"], str(self.logs / "ray.log"))

    def _wait_ready(self, services: dict[str, Service], timeout: float) -> None:
        deadline = time.time() + timeout
        pending = dict(services)
        while pending:
            for name, svc in list(pending.items()):
                if not svc.alive():
                    raise StackError(f"{name} exited while starting; last lines of {svc.log}:\n{_tail(svc.log)}")
                if self._ready(name, svc):
                    del pending[name]
            if pending and time.time() > deadline:
                name, svc = next(iter(pending.items()))
                raise StackError(f"{name} did not become ready in {timeout:.0f}s; "
                                 f"last lines of {svc.log}:\n{_tail(svc.log)}")
            if pending:
                time.sleep(0.5)

    def _ready(self, name: str, svc: Service) -> bool:
        try:
            if name == "mlflow":
                return requests.get(f"http://127.0.0.1:{svc.port}/health", timeout=2).ok
            if name == "s3":
                return requests.get(f"http://127.0.0.1:{svc.port}/moto-api/", timeout=2).status_code < 500
            if name == "ray":
                return "Ray runtime started" in Path(svc.log).read_text(errors="replace")[-20000:]
        except (requests.RequestException, OSError):
            return False
        return False

    def _ensure_bucket(self, port: int) -> None:
        import boto3

        from orchestrator.environment import LOCAL_S3_REGION

        creds = self.credentials()
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=LOCAL_S3_REGION,
                          aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"])
        try:
            s3.head_bucket(Bucket=LOCAL_BUCKET)
        except Exception:  # noqa: BLE001 - any miss means: create it
            s3.create_bucket(Bucket=LOCAL_BUCKET)

    def _write_profile(self, running: dict[str, Service], ray_ports: dict[str, int]) -> dict[str, Any]:
        s3 = running.get("s3")
        profile = {
            "ray_address": f"127.0.0.1:{ray_ports['gcs']}",
            "dashboard_url": f"http://127.0.0.1:{ray_ports['dashboard']}",
            "mlflow_uri": f"http://127.0.0.1:{running['mlflow'].port}" if "mlflow" in running else None,
            "s3_endpoint": f"http://127.0.0.1:{s3.port}" if s3 else None,
            "storage_root": f"s3://{LOCAL_BUCKET}" if s3 else str(self.home / "storage"),
            "ray_temp_dir": ray_temp_dir(self.home),
        }
        self.profile_file.write_text(json.dumps(profile, indent=2))
        return profile

    def down(self, timeout: float = 30.0) -> list[str]:
        """Stops exactly the processes this stack started (by PID and process group)."""
        stopped = []
        services = self.services()
        # Ray first: its workers may still talk to the others.
        for name in sorted(services, key=lambda n: n != "ray"):
            svc = services[name]
            if svc.alive() or _group_alive(svc.pid):
                # `ray start --block` spends ~30 s on a graceful SIGTERM; a local head
                # has nothing to save, so it gets a short grace before SIGKILL.
                _stop_group(svc.pid, min(timeout, 5.0) if name == "ray" else timeout)
                stopped.append(name)
        _kill_strays(ray_temp_dir(self.home))
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            state["services"] = {}
            self.state_file.write_text(json.dumps(state, indent=2))
        shutil.rmtree(ray_temp_dir(self.home), ignore_errors=True)
        return stopped

    def status(self) -> dict[str, Any]:
        """What runs where: per service, pid, port, alive."""
        return {
            "home": str(self.home),
            "services": {k: {"pid": v.pid, "port": v.port, "alive": v.alive(), "log": v.log}
                         for k, v in self.services().items()},
            "profile": self.profile(),
        }


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop_group(pgid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _group_alive(pgid) or not _group_has_live_member(pgid):
                return
            time.sleep(0.2)


def _group_has_live_member(pgid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().split(")")[-1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _kill_strays(marker: str) -> None:
    """Kills any process whose command line names our Ray temp dir (workers that left the group)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
