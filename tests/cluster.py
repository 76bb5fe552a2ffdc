"""A multi-node Ray cluster on one machine for chaos tests and the recovery benchmark.

Every node is its own ``ray start --block`` process in its own process group, so a
test can make one vanish (SIGKILL the group) exactly as a reclaimed spot VM does.
Token auth stays on; every port is explicit; the temp dir is short and private.
Nothing here uses ``ray stop`` (it would stop every cluster on the machine). Each node carries a
marker of its own in its environment (inherited by its raylet and workers), and the processes that
leave its group (Ray's workers) are found from its descendants and Ray's records, never from
command lines (``orchestrator/stack/processes.py``).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.stack.processes import Owner, descendants, free_port, ray_recorded_pids, stop_strays

BIN = Path(sys.executable).parent
NODE_MARKER = "ganray_test_node"  # in each node's environment: what its processes inherit

# Tuned so a dead node is noticed in ~3 s and a drain in ~1 s (defaults: ~15 s and 5 s).
FAST_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
}


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    owner: Owner
    node_id: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalCluster:
    """A head (no CPUs: it hosts drivers and controllers) plus worker nodes added by name."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, tuned: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.temp_dir = f"/tmp/grc-{secrets.token_hex(4)}"
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.env = {**os.environ, **(env or {}), **(FAST_DETECTION if tuned else {}),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, Node] = {}
        self.address: str | None = None

    def client_env(self) -> dict[str, str]:
        """Environment for a driver (e.g. `ganray run`) that joins this cluster."""
        return {**self.env, "RAY_ADDRESS": self.address}

    def _start(self, name: str, args: list[str]) -> Node:
        log = self.root / f"{name}.log"
        ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port", "--runtime-env-agent-port"]
        port_args = [a for p in ports for a in (p, str(free_port()))]
        cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args, *port_args]
        marker, started = f"{secrets.token_hex(8)}-{name}", time.time()
        proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**self.env, NODE_MARKER: marker}, start_new_session=True, cwd=self.root)
        node = Node(name, proc, log, Owner(f"{NODE_MARKER}={marker}", started))
        self.nodes[name] = node
        return node

    def start_head(self, timeout: float = 90) -> str:
        port = free_port()
        self._start("head", ["--head", "--port", str(port), "--temp-dir", self.temp_dir, "--num-cpus", "0",
                             "--include-dashboard", "false", "--ray-client-server-port", str(free_port())])
        self.address = f"127.0.0.1:{port}"
        self._wait_started("head", timeout)
        return self.address

    def add_node(self, name: str, num_cpus: int = 1, timeout: float = 90) -> Node:
        """Starts a worker node (custom resource `gr_<name>`) and waits until Ray lists it."""
        node = self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus),
                                  "--resources", json.dumps({f"gr_{name}": 1})])
        self._wait_started(name, timeout)
        node.node_id = self._node_id_of(name, timeout)
        return node

    def _wait_started(self, name: str, timeout: float) -> None:
        node, deadline = self.nodes[name], time.time() + timeout
        while time.time() < deadline:
            if not node.alive():
                raise RuntimeError(f"ray node {name} exited:\n{node.log.read_text()[-3000:]}")
            if "Ray runtime started" in node.log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"ray node {name} did not start in {timeout}s:\n{node.log.read_text()[-3000:]}")

    def _node_id_of(self, name: str, timeout: float) -> str:
        code = ("import json, ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False);"
                "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']]))")
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", code], env=self.client_env(), capture_output=True,
                                 text=True, timeout=60)
            if out.returncode == 0:
                for node_id, resources in json.loads(out.stdout.strip().splitlines()[-1]):
                    if f"gr_{name}" in resources:
                        return node_id
            time.sleep(1)
        raise TimeoutError(f"node {name} never appeared in ray.nodes()")

    def _strays(self, node: Node) -> set[int]:
        """The node's processes that may have left its group: its descendants, and what Ray recorded."""
        return descendants({node.proc.pid}) | ray_recorded_pids(self.temp_dir)

    def kill_node(self, name: str) -> None:
        """The node vanishes: SIGKILL to its whole process group and to its workers (each in a group of
        its own), as when a VM is reclaimed."""
        node = self.nodes[name]
        strays = self._strays(node)  # before its group goes: whom it started
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc.wait(timeout=30)
        stop_strays(strays, node.owner)

    def stop(self) -> None:
        strays = {name: self._strays(node) for name, node in self.nodes.items()}
        for name in list(self.nodes)[::-1]:
            node = self.nodes[name]
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for name, pids in strays.items():
            stop_strays(pids, self.nodes[name].owner)
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)

