"""Issue 17 on Kubernetes, tried as an attacker: a process on a spot VM, a pod in the namespace or
beside it, a user of MLflow who should see one model. Each case is what the manifests, the notice
agent's shell and MLflow's users script (k8s/base/mlflow_users.py) must refuse:

- notice-agent.sh takes the Ray cluster's address from the Ray node's own files on the host (never from a
  process's command line, which any process on the VM can forge) and refuses files someone else could
  have written or that are not a plain HOST:PORT;
- every secret reaches only the pods that need it, as a file where the consumer reads files; each Ray
  cluster has its own token; no Ray container holds MLflow's admin login;
- the NetworkPolicies, evaluated as Kubernetes does, let only the ingress reach the serve port, keep
  Ray's traffic inside each cluster and let the KubeRay operator reach the dashboards;
- on a real MLflow server configured as mlflow-auth.ini, the users the Job creates get exactly their
  permissions: anonymous requests are refused, serving reads its one model and writes nothing.
"""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from conftest import ENDPOINT_VARS
from k8s_manifests import (K8S, RAY_KINDS, RECORDING_AGENT, TARGETS, cluster_spec, find, pod_templates, ray_session,
                           render, secret_reads, start_agent_script, stop_agent_script, until)
from orchestrator.stack.processes import free_port

HEAD = "ganray-head-svc.ganray.svc.cluster.local:6379"


# --- notice-agent.sh: where the Ray cluster's address comes from -----------------------------------------

def _forged_raylet(proc: Path) -> None:
    """A process anyone on the VM can start (hostPID showed it to the old script): named like a raylet."""
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cmdline").write_bytes(b"/x/raylet\0--gcs-address=evil:1\0--node_id=ab12\0")


def test_a_process_named_raylet_cannot_redirect_the_agent(tmp_path):
    _forged_raylet(tmp_path / "proc")
    script = start_agent_script(tmp_path, RECORDING_AGENT, "--provider", "aws", NOTICE_AGENT_PROC=str(tmp_path / "proc"))
    try:
        time.sleep(1.0)
        assert script.poll() is None and not (tmp_path / "called").exists()  # no Ray node's files: it waits
        ray_session(tmp_path / "ray", HEAD)
        assert until(lambda: (tmp_path / "called").exists())
        assert until(lambda: (tmp_path / "called").read_text().strip() == f"agent --address {HEAD} --provider aws")
    finally:
        log = stop_agent_script(script)
    assert "evil" not in log


def _others_can_write_the_address(ray_tmp: Path) -> str:
    (ray_tmp / "ray_current_cluster").chmod(0o666)
    return "ray_current_cluster"


def _others_can_write_the_folder(ray_tmp: Path) -> str:
    ray_tmp.chmod(0o777)
    return str(ray_tmp)


def _the_address_is_a_link(ray_tmp: Path) -> str:
    (ray_tmp / "planted").write_text("evil:1")
    (ray_tmp / "ray_current_cluster").unlink()
    (ray_tmp / "ray_current_cluster").symlink_to(ray_tmp / "planted")
    return "ray_current_cluster"


def _the_token_is_a_link(ray_tmp: Path) -> str:
    (ray_tmp / "ganray_auth_token").unlink()
    (ray_tmp / "ganray_auth_token").symlink_to("/etc/hostname")
    return "ganray_auth_token"


def _others_can_read_the_token(ray_tmp: Path) -> str:
    (ray_tmp / "ganray_auth_token").chmod(0o644)
    return "ganray_auth_token"


def _a_forged_log_line(ray_tmp: Path) -> str:
    (ray_tmp / "ray_current_cluster").write_text("ganray-head:6379\nnotice-agent: node drained for preemption")
    return "not HOST:PORT"


def _a_shell_command(ray_tmp: Path) -> str:
    (ray_tmp / "ray_current_cluster").write_text(f"$(touch {ray_tmp}/pwned):1")
    return "not HOST:PORT"


def _an_option_for_the_agent(ray_tmp: Path) -> str:
    (ray_tmp / "ray_current_cluster").write_text("--node-id=ab12")
    return "not HOST:PORT"


@pytest.mark.parametrize("plant", [_others_can_write_the_address, _others_can_write_the_folder, _the_address_is_a_link,
                                   _the_token_is_a_link, _others_can_read_the_token, _a_forged_log_line,
                                   _a_shell_command, _an_option_for_the_agent])
def test_session_files_someone_else_could_have_written_are_refused(tmp_path, plant):
    ray_tmp = ray_session(tmp_path / "ray", HEAD)
    named = plant(ray_tmp)
    script = start_agent_script(tmp_path, RECORDING_AGENT, "--provider", "gcp")
    try:
        time.sleep(1.0)
        assert script.poll() is None and not (tmp_path / "called").exists()  # refused, and still waiting
        ray_tmp.chmod(0o700)
        ray_session(ray_tmp, HEAD)  # the Ray pod writes its files again: now they are used
        assert until(lambda: (tmp_path / "called").exists())
        assert until(lambda: (tmp_path / "called").read_text().strip() == f"agent --address {HEAD} --provider gcp")
    finally:
        log = stop_agent_script(script)
    refusals = [line for line in log.splitlines() if "refus" in line]
    assert len(refusals) == 1 and named in refusals[0], log  # named, and said once, not once per poll
    assert not (ray_tmp / "pwned").exists()
    assert not [line for line in log.splitlines() if line.startswith("notice-agent: node drained")]  # no forged line


# --- who holds which secret -------------------------------------------------------------------------------

TRAINING = {"RayCluster/ganray head", "RayCluster/ganray spot-gpu", "RayJob/ganray-train head",
            "RayJob/ganray-train spot-gpu"}
SERVING = {"RayService/ganray-serve head", "RayService/ganray-serve serve-gpu"}
USERS_JOB = "Job/ganray-mlflow-users"
HOLDERS = {  # Secret: the pod templates whose containers can read it, and nothing else can
    "ganray-mlflow": {"Deployment/mlflow", USERS_JOB},  # MLflow's admin: only where users are administered
    "ganray-mlflow-train": {"RayCluster/ganray head", "RayJob/ganray-train head", USERS_JOB},  # drivers, Train controllers
    "ganray-mlflow-serve": SERVING | {USERS_JOB},
    "ganray-ray-token": {"RayCluster/ganray head", "RayCluster/ganray spot-gpu"},
    "ganray-train-ray-token": {"RayJob/ganray-train head", "RayJob/ganray-train spot-gpu"},
    "ganray-serve-ray-token": SERVING,
    "ganray-serve-token": SERVING,
    "ganray-s3": TRAINING | {"Deployment/mlflow"},  # serving reads models through MLflow, never the bucket
    "ganray-postgres": {"Deployment/mlflow", "StatefulSet/postgres"},
}
# The one place a secret is an environment variable: MLflow's server reads its admin's first password and
# its Flask key only from there, and libpq ignores a password file the pod's group can read.
ENV_SECRETS = {("Deployment/mlflow", "ganray-postgres"), ("Deployment/mlflow", "ganray-mlflow")}


@pytest.mark.parametrize("target", TARGETS)
def test_each_secret_reaches_only_the_pods_that_need_it(target):
    holders: dict[str, set[str]] = {}
    for doc in render(target):
        for where, template in pod_templates(doc):
            for c in template["spec"]["containers"] + template["spec"].get("initContainers", []):
                for secret, _ in secret_reads(template, c):
                    holders.setdefault(secret, set()).add(where)
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    assert not ref or (where, ref["name"]) in ENV_SECRETS, f"{where}: {env['name']} from a Secret"
    assert holders == HOLDERS
    assert "DaemonSet/ganray-notice-agent" not in {w for ws in holders.values() for w in ws}


@pytest.mark.parametrize("target", TARGETS)
def test_each_ray_cluster_has_its_own_token_read_from_a_file(target):
    tokens = {}
    for doc in (d for d in render(target) if d["kind"] in RAY_KINDS):
        secret = cluster_spec(doc)["authOptions"]["secretName"]
        tokens[doc["kind"]] = secret
        for where, template in pod_templates(doc):
            ray = template["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in ray["env"]}
            # Set and empty: KubeRay adds no copy of the token in the environment, and Ray reads the file.
            assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "", where
            mount = next(m for m in ray["volumeMounts"] if env["RAY_AUTH_TOKEN_PATH"].startswith(m["mountPath"] + "/"))
            volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
            assert volume["secret"]["secretName"] == secret and mount.get("readOnly") is True, where
    assert len(set(tokens.values())) == len(tokens) == 3, tokens


# --- NetworkPolicies, evaluated -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict = field(hash=False)
    ip: str
    host_network: bool = False


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, values = e["key"] in labels, e.get("values", [])
        ok = {"In": has and labels.get(e["key"]) in values, "NotIn": not has or labels[e["key"]] not in values,
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict, src: Pod, namespace: str) -> bool:
    if "ipBlock" in peer:  # a host-network pod is its node's address to a policy
        ip, block = ipaddress.ip_address(src.ip), peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(c) for c in block.get("except", []))
    if src.host_network:
        return False
    if "namespaceSelector" in peer:  # kubernetes.io/metadata.name: set by the API server, not by a namespace's owner
        in_namespace = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src.namespace})
    else:
        in_namespace = src.namespace == namespace
    return in_namespace and _selects(peer.get("podSelector", {}), src.labels)


def _port_admits(rule: dict, port: int) -> bool:
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        assert p.get("protocol", "TCP") == "TCP" and isinstance(p.get("port", 0), int), p  # no named ports here
        if "port" not in p or p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def allowed(policies: list[dict], src: Pod, dst: Pod, port: int) -> bool:
    """Whether Kubernetes' NetworkPolicy semantics admit a TCP connection from src to dst:port."""
    if dst.host_network:
        return True  # policies select no host-network pod
    applying = [p for p in policies if p["metadata"]["namespace"] == dst.namespace
                and _selects(p["spec"]["podSelector"], dst.labels) and "Ingress" in p["spec"]["policyTypes"]]
    return not applying or any(
        _port_admits(rule, port) and (not rule.get("from") or any(
            _peer_admits(peer, src, p["metadata"]["namespace"]) for peer in rule["from"]))
        for p in applying for rule in p["spec"].get("ingress", []))


GENERATED = {"RayCluster": "{}", "RayJob": "{}-x7k2p", "RayService": "{}-raycluster-q9w8e"}  # KubeRay's cluster names


def _pods(docs) -> dict[str, Pod]:
    """The pods the manifests make, labelled as KubeRay and the Job controller label them, beside others."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    node_cidrs = [b["ipBlock"]["cidr"] for p in policies for r in p["spec"].get("ingress", [])
                  for b in r.get("from", []) if "ipBlock" in b]
    assert node_cidrs, "no policy admits the spot nodes' addresses"
    node_ip = str(next(ipaddress.ip_network(node_cidrs[0]).hosts()))
    pod_ips = (str(ip) for ip in ipaddress.ip_network("100.64.0.0/16").hosts())  # a pod range outside the nodes'
    pods = {}
    for doc in docs:
        for where, template in pod_templates(doc):
            labels = dict(template.get("metadata", {}).get("labels", {}))
            if doc["kind"] in RAY_KINDS:
                labels |= {"ray.io/cluster": GENERATED[doc["kind"]].format(doc["metadata"]["name"]),
                           "ray.io/node-type": "head" if where.endswith(" head") else "worker", "ray.io/is-ray-node": "yes"}
            if doc["kind"] == "Job":
                labels |= {"batch.kubernetes.io/job-name": doc["metadata"]["name"], "job-name": doc["metadata"]["name"]}
            host = template["spec"].get("hostNetwork", False)
            pods[where] = Pod("ganray", labels, node_ip if host else next(pod_ips), host)
    pods.update({
        "the ingress controller": Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, next(pod_ips)),
        "the KubeRay operator": Pod("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"}, next(pod_ips)),
        "an operator look-alike elsewhere": Pod("default", {"app.kubernetes.io/name": "kuberay-operator"}, next(pod_ips)),
        "the RayJob's submitter": Pod("ganray", {"batch.kubernetes.io/job-name": "ganray-train",
                                                 "job-name": "ganray-train"}, next(pod_ips)),
        "a pod of the namespace": Pod("ganray", {"app": "debug"}, next(pod_ips)),
        "a pod of another namespace": Pod("default", {"app": "debug"}, next(pod_ips)),
    })
    assert not any(ipaddress.ip_address(p.ip) in ipaddress.ip_network(c) for p in pods.values() if not p.host_network
                   for c in node_cidrs)
    return pods


SERVE_HEAD, SERVE_WORKER = "RayService/ganray-serve head", "RayService/ganray-serve serve-gpu"
CLUSTER_HEAD, JOB_HEAD = "RayCluster/ganray head", "RayJob/ganray-train head"
REACH = [  # (from, to, port, admitted)
    ("the ingress controller", SERVE_HEAD, 8000, True),
    ("the ingress controller", SERVE_WORKER, 8000, True),
    ("the ingress controller", SERVE_HEAD, 8265, False),
    ("the ingress controller", SERVE_WORKER, 6379, False),
    ("the ingress controller", CLUSTER_HEAD, 8265, False),
    ("a pod of the namespace", SERVE_WORKER, 8000, False),
    ("a pod of another namespace", SERVE_HEAD, 8000, False),
    ("the KubeRay operator", SERVE_WORKER, 8000, False),
    (SERVE_WORKER, SERVE_HEAD, 6379, True),  # Ray's own traffic, inside one cluster
    (SERVE_HEAD, SERVE_WORKER, 20002, True),
    (CLUSTER_HEAD, SERVE_HEAD, 6379, False),  # ... and not from another
    (JOB_HEAD, CLUSTER_HEAD, 6379, False),
    (SERVE_WORKER, JOB_HEAD, 6379, False),
    ("RayCluster/ganray spot-gpu", CLUSTER_HEAD, 6379, True),  # host network: the spot node's address
    ("RayJob/ganray-train spot-gpu", JOB_HEAD, 6379, True),
    ("RayCluster/ganray spot-gpu", SERVE_HEAD, 6379, False),
    ("a pod of the namespace", CLUSTER_HEAD, 6379, False),
    ("a pod of another namespace", JOB_HEAD, 10001, False),
    ("the KubeRay operator", CLUSTER_HEAD, 8265, True),  # the operator's calls to the dashboards
    ("the KubeRay operator", JOB_HEAD, 8265, True),
    ("the KubeRay operator", SERVE_HEAD, 8265, True),
    ("the KubeRay operator", CLUSTER_HEAD, 6379, False),
    ("an operator look-alike elsewhere", CLUSTER_HEAD, 8265, False),
    ("the RayJob's submitter", JOB_HEAD, 8265, True),
    ("the RayJob's submitter", CLUSTER_HEAD, 8265, False),
    ("a pod of the namespace", CLUSTER_HEAD, 8265, False),
    (CLUSTER_HEAD, "Deployment/mlflow", 5000, True),  # MLflow: its clients and the ingress for people
    (JOB_HEAD, "Deployment/mlflow", 5000, True),
    (SERVE_WORKER, "Deployment/mlflow", 5000, True),
    (USERS_JOB, "Deployment/mlflow", 5000, True),
    ("the ingress controller", "Deployment/mlflow", 5000, True),
    ("RayCluster/ganray spot-gpu", "Deployment/mlflow", 5000, False),  # no MLflow login there
    ("a pod of the namespace", "Deployment/mlflow", 5000, False),
    ("a pod of another namespace", "Deployment/mlflow", 5000, False),
    ("Deployment/mlflow", "StatefulSet/postgres", 5432, True),
    (CLUSTER_HEAD, "StatefulSet/postgres", 5432, False),
    ("the ingress controller", "StatefulSet/postgres", 5432, False),
]


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_admit_exactly_this_table(target):
    docs = render(target)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = _pods(docs)
    got = [(src, dst, port, allowed(policies, pods[src], pods[dst], port)) for src, dst, port, _ in REACH]
    assert [g for g, want in zip(got, REACH) if g != want] == []
    # Default deny: every pod of the namespace that is on the pod network is selected by some policy.
    for where, pod in pods.items():
        if pod.namespace == "ganray" and not pod.host_network:
            assert any(_selects(p["spec"]["podSelector"], pod.labels) for p in policies), where


def test_the_evaluator_knows_kubernetes_semantics():
    pod = Pod("ganray", {"a": "1"}, "100.64.0.9")
    deny = {"metadata": {"namespace": "ganray"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    allow = {"metadata": {"namespace": "ganray"}, "spec": {"podSelector": {"matchLabels": {"a": "1"}},
             "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 80, "endPort": 90}]}]}}
    other = Pod("x", {}, "100.64.0.10")
    assert allowed([], other, pod, 80) and not allowed([deny], other, pod, 80)
    assert allowed([deny, allow], other, pod, 85) and not allowed([deny, allow], other, pod, 91)
    assert allowed([deny], other, Pod("ganray", {}, "10.0.0.1", host_network=True), 80)
    assert _selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["2"]}]}, {"a": "1"})
    assert not _selects({"matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"})


# --- MLflow users on a real server ---------------------------------------------------------------------------

@dataclass
class Server:
    uri: str
    admin: tuple[str, str]


@pytest.fixture
def k8s_mlflow(tmp_path):
    """A real MLflow server with the basic-auth app of k8s/base/mlflow-auth.ini (its user store on SQLite here)."""
    ini = re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{tmp_path / 'auth.db'}",
                 (K8S / "base" / "mlflow-auth.ini").read_text())
    (tmp_path / "basic_auth.ini").write_text(ini)
    port, admin = free_port(), ("admin", secrets.token_hex(12))
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "basic_auth.ini"), MLFLOW_AUTH_ADMIN_USERNAME=admin[0],
               MLFLOW_AUTH_ADMIN_PASSWORD=admin[1], MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "mlflow.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts")],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        assert until(lambda: _health(uri), timeout=180), (tmp_path / "mlflow.log").read_text()[-3000:]
        yield Server(uri, admin)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def _health(uri: str) -> bool:
    try:
        return requests.get(f"{uri}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _login_file(path: Path, username: str, password: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[mlflow]\nmlflow_tracking_username = {username}\nmlflow_tracking_password = {password}\n")


def _run_users_job(tmp_path: Path, uri: str, files: dict[tuple[str, str], str]) -> subprocess.CompletedProcess:
    """The Job ganray-mlflow-users as rendered, run here: its Secret mounts become folders holding files
    (files: (Secret, key) -> content), its ConfigMap mount the script in k8s/base."""
    job = find(render("overlays/aws"), "Job", USERS_JOB.split("/")[1])
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    argv = [*container["command"], *container.get("args", [])]
    for mount in container["volumeMounts"]:
        volume, here = volumes[mount["name"]], tmp_path / "mounts" / mount["name"]
        if "configMap" in volume:
            here = K8S / "base"
        else:
            here.mkdir(parents=True, exist_ok=True)
            for item in volume["secret"]["items"]:
                (here / item["path"]).write_text(files[(volume["secret"]["secretName"], item["key"])])
        argv = [a.replace(mount["mountPath"], str(here)) for a in argv]
    assert argv[0] == "python" and not [e for e in container.get("env", []) if "valueFrom" in e]
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS} | {"MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=300)


def _api(server: Server, login, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{server.uri}{path}", auth=login, timeout=30, **kw)


def _login(text: str) -> tuple[str, str]:
    user = re.search(r"(?m)^mlflow_tracking_username = (.+)$", text).group(1)
    return user, re.search(r"(?m)^mlflow_tracking_password = (.+)$", text).group(1)


def test_mlflow_users_get_exactly_their_permissions(k8s_mlflow, tmp_path):
    server = k8s_mlflow
    train_pw, serve_pw = secrets.token_hex(12), secrets.token_hex(12)
    files = {("ganray-mlflow", "admin_username"): server.admin[0], ("ganray-mlflow", "admin_password"): server.admin[1]}
    for secret, user, pw in (("ganray-mlflow-train", "ganray-train", train_pw), ("ganray-mlflow-serve", "ganray-serve", serve_pw)):
        _login_file(tmp_path / "login", user, pw)
        files[(secret, "credentials")] = (tmp_path / "login").read_text()
    done = _run_users_job(tmp_path, server.uri, files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [pw for pw in (train_pw, serve_pw, server.admin[1]) if pw in done.stdout + done.stderr]
    train, serve = _login(files[("ganray-mlflow-train", "credentials")]), _login(files[("ganray-mlflow-serve", "credentials")])

    assert _api(server, None, "GET", "/api/2.0/mlflow/experiments/get-by-name",
                params={"experiment_name": "ganray"}).status_code == 401  # anonymous: refused
    assert _api(server, server.admin, "POST", "/api/2.0/mlflow/registered-models/create",
                json={"name": "someone-elses"}).status_code == 200
    # Training: its experiment and its model, nothing else.
    exp = _api(server, train, "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "ganray"})
    assert exp.status_code == 200, exp.text
    run = _api(server, train, "POST", "/api/2.0/mlflow/runs/create",
               json={"experiment_id": exp.json()["experiment"]["experiment_id"]}).json()["run"]["info"]
    artifacts = run["artifact_uri"].removeprefix("mlflow-artifacts:")
    put = _api(server, train, "PUT", f"/api/2.0/mlflow-artifacts/artifacts{artifacts}/generator.txt", data=b"weights")
    assert put.status_code == 200, put.text
    version = _api(server, train, "POST", "/api/2.0/mlflow/model-versions/create",
                   json={"name": "anime-gen", "source": run["artifact_uri"], "run_id": run["run_id"]})
    assert version.status_code == 200, version.text
    alias = {"name": "anime-gen", "alias": "champion", "version": version.json()["model_version"]["version"]}
    assert _api(server, train, "POST", "/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 200
    assert _api(server, train, "GET", "/api/2.0/mlflow/registered-models/get",
                params={"name": "someone-elses"}).status_code == 403
    assert _api(server, train, "POST", "/api/2.0/mlflow/users/create",
                json={"username": "mallory", "password": "x" * 16}).status_code == 403
    # Serving: reads its one model (the version and its files), writes nothing.
    got = _api(server, serve, "GET", "/api/2.0/mlflow/registered-models/alias", params={"name": "anime-gen", "alias": "champion"})
    assert got.status_code == 200, got.text
    download = _api(server, serve, "GET", f"/api/2.0/mlflow-artifacts/artifacts{artifacts}/generator.txt")
    assert (download.status_code, download.content) == (200, b"weights")
    assert _api(server, serve, "POST", "/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 403
    assert _api(server, serve, "POST", "/api/2.0/mlflow/model-versions/create",
                json={"name": "anime-gen", "source": run["artifact_uri"]}).status_code == 403
    assert _api(server, serve, "POST", "/api/2.0/mlflow/runs/create",
                json={"experiment_id": exp.json()["experiment"]["experiment_id"]}).status_code == 403
    assert _api(server, serve, "PUT", f"/api/2.0/mlflow-artifacts/artifacts{artifacts}/planted.txt",
                data=b"x").status_code == 403
    assert _api(server, serve, "GET", "/api/2.0/mlflow/registered-models/get",
                params={"name": "someone-elses"}).status_code == 403

    # The Job runs again (every apply): nothing breaks, and a rotated password is the one that works.
    _login_file(tmp_path / "login", "ganray-serve", "rotated-" + serve_pw)
    files[("ganray-mlflow-serve", "credentials")] = (tmp_path / "login").read_text()
    again = _run_users_job(tmp_path, server.uri, files)
    assert again.returncode == 0, again.stdout + again.stderr
    path = "/api/2.0/mlflow/registered-models/get"
    assert _api(server, serve, "GET", path, params={"name": "anime-gen"}).status_code == 401
    assert _api(server, ("ganray-serve", "rotated-" + serve_pw), "GET", path, params={"name": "anime-gen"}).status_code == 200


def _add_person(server: Server, name: str, permission: str) -> tuple[str, str]:
    """`mlflow_users.py person NAME --permission P`, as an admin runs it: the admin's password typed at the
    prompt (stdin here, no terminal), the person's new password printed once."""
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS} | {"MLFLOW_TRACKING_URI": server.uri}
    out = subprocess.run([sys.executable, str(K8S / "base" / "mlflow_users.py"), "person", name, "--permission",
                          permission, "--admin", server.admin[0]], input=server.admin[1] + "\n", env=env,
                         capture_output=True, text=True, timeout=120, start_new_session=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert server.admin[1] not in out.stdout + out.stderr
    return name, re.search(r"password: (\S+)", out.stdout).group(1)


def test_people_get_their_own_login_and_no_more(k8s_mlflow, tmp_path):
    server = k8s_mlflow
    files = {("ganray-mlflow", "admin_username"): server.admin[0], ("ganray-mlflow", "admin_password"): server.admin[1]}
    for secret, user in (("ganray-mlflow-train", "ganray-train"), ("ganray-mlflow-serve", "ganray-serve")):
        _login_file(tmp_path / "login", user, secrets.token_hex(12))
        files[(secret, "credentials")] = (tmp_path / "login").read_text()
    assert _run_users_job(tmp_path, server.uri, files).returncode == 0
    train = _login(files[("ganray-mlflow-train", "credentials")])
    exp = _api(server, train, "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "ganray"})
    exp_id = exp.json()["experiment"]["experiment_id"]
    run = _api(server, train, "POST", "/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}).json()["run"]["info"]
    v = _api(server, train, "POST", "/api/2.0/mlflow/model-versions/create",
             json={"name": "anime-gen", "source": run["artifact_uri"], "run_id": run["run_id"]}).json()
    alias = {"name": "anime-gen", "alias": "champion", "version": v["model_version"]["version"]}

    viewer, promoter = _add_person(server, "alice", "READ"), _add_person(server, "bob", "EDIT")
    runs = _api(server, viewer, "POST", "/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp_id]})
    assert runs.status_code == 200 and runs.json()["runs"][0]["info"]["run_id"] == run["run_id"]
    assert _api(server, viewer, "POST", "/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 403
    assert _api(server, promoter, "POST", "/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 200
    assert _api(server, promoter, "POST", "/api/2.0/mlflow/users/update-admin",
                json={"username": "bob", "is_admin": True}).status_code == 403
    assert _api(server, ("alice", "wrong"), "POST", "/api/2.0/mlflow/runs/search",
                json={"experiment_ids": [exp_id]}).status_code == 401
