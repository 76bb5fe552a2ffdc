"""The Kubernetes manifests (k8s/) as the k8s tests read them: rendered per target, and their objects,
pod templates and containers picked out; and the notice agent's shell run on a stand-in for the host's
Ray temp dir. Shared by tests/test_k8s.py, tests/test_k8s_*.py and tests/test_hostile_k8s.py.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from conftest import ROOT

K8S = ROOT / "k8s"
OVERLAYS = ("aws", "gcp")
TARGETS = ("base", *(f"overlays/{o}" for o in OVERLAYS))
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


@functools.cache
def render(target: str) -> tuple[dict, ...]:
    """`kubectl kustomize k8s/<target>` (or `kustomize build`), parsed."""
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(K8S / target)]
    else:
        assert shutil.which("kustomize"), "the k8s tests need kubectl or kustomize on PATH"
        cmd = ["kustomize", "build", str(K8S / target)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def find(docs, kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def cluster_spec(doc: dict) -> dict:
    """The RayClusterSpec of a RayCluster, RayJob or RayService."""
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod template) of a workload: Ray heads and worker groups, or spec.template."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in RAY_KINDS:
        spec = cluster_spec(doc)
        return [(f"{name} head", spec["headGroupSpec"]["template"])] + [
            (f"{name} {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [(name, doc["spec"]["template"])]
    return []


def containers(docs) -> list[tuple[str, dict]]:
    """(where, container) of every container and init container of every workload."""
    return [(f"{where} {c['name']}", c) for doc in docs for where, t in pod_templates(doc)
            for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]


# The shell the notice agent runs (k8s/base/notice-agent.sh), run here: a folder stands in for the host's
# Ray temp dir (/var/lib/ganray/ray, at /tmp/ray in the Ray pod and the agent) and a recording script for
# `ganray` (the real agent needs a cloud's metadata server and a Ray node on the same host).
AGENT_SCRIPT = K8S / "base" / "notice-agent.sh"


def ray_session(ray_tmp: Path, address: str, token: str = "node-token", session: str = "session_1",
                raylet: str = "raylet") -> Path:
    """What a Ray pod leaves in the Ray temp dir it shares with the agent: its init container's
    ganray_auth_token (0400), then Ray's session folder with the raylet's socket, session_latest and
    ray_current_cluster (the GCS address `ray start` writes)."""
    ray_tmp.mkdir(mode=0o700, exist_ok=True)
    address_file, token_file = ray_tmp / "ray_current_cluster", ray_tmp / "ganray_auth_token"
    for f in (address_file, token_file):  # the init container's `rm -f`, `install`: never through a link
        if f.exists() or f.is_symlink():
            f.unlink()
    token_file.write_text(token)
    token_file.chmod(0o400)
    sockets = ray_tmp / session / "sockets"
    sockets.mkdir(parents=True, exist_ok=True)
    (sockets / raylet).write_text("")
    latest = ray_tmp / "session_latest"
    if latest.is_symlink():
        latest.unlink()
    latest.symlink_to(ray_tmp / session)
    address_file.write_text(address)
    return ray_tmp


def until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def start_agent_script(tmp_path: Path, fake_ganray: str, *args: str, **env: str) -> subprocess.Popen:
    """notice-agent.sh ARGS with tmp_path/ray as the Ray temp dir and fake_ganray as `ganray`'s body
    (it sees CALLED, a file to record in); stdout and stderr together, as the pod's log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ganray").write_text(f"#!/bin/sh\n{fake_ganray}\n")
    (bin_dir / "ganray").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NOTICE_AGENT_RAY_TMP": str(tmp_path / "ray"),
           "NOTICE_AGENT_WAIT_S": "0.1", "CALLED": str(tmp_path / "called"), **env}
    return subprocess.Popen(["sh", str(AGENT_SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop_agent_script(script: subprocess.Popen) -> str:
    """Stops the script and everything it started (its own process group), and returns its log."""
    try:
        os.killpg(script.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    script.wait(timeout=30)
    return script.stdout.read()


# The fake agent: records its PID, the token of the file RAY_AUTH_TOKEN_PATH names and its arguments, then runs.
RECORDING_AGENT = ('echo $$ > "$CALLED.pid"; cat "$RAY_AUTH_TOKEN_PATH" > "$CALLED.token"; echo "$@" > "$CALLED"; '
                   'exec sleep 60')


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def secret_reads(template: dict, container: dict) -> set[tuple[str, str]]:
    """(Secret, key) pairs a container can read: from its env (secretKeyRef, envFrom secretRef as key '*')
    and from the Secret volumes it mounts (every item, or '*' for the whole Secret)."""
    reads = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
             for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    reads |= {(s["secretRef"]["name"], "*") for s in container.get("envFrom", []) if "secretRef" in s}
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")  # none: a claim template's volume
        if secret:
            reads |= {(secret["secretName"], i["key"]) for i in secret.get("items", [])} or {(secret["secretName"], "*")}
    return reads
