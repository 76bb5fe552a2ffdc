"""What the manifests promise: on-demand heads, spot GPU workers that outlast the notice, token
auth, a training job whose spec is a valid JobSpec, MLflow behind auth, a served champion alias."""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from conftest import ROOT
from k8s_manifests import OVERLAYS, RAY_KINDS, TARGETS, cluster_spec, containers, find, pod_templates, render
from orchestrator.agent.notices import GCP_NOTICE_S
from orchestrator.job.spec_file import parse_spec

NOTICE_S = {"aws": 120.0, "gcp": GCP_NOTICE_S}  # AWS: two minutes (IMDS instance-action); GCE: 30 s
SPOT = {"aws": ("eks.amazonaws.com/capacityType", "SPOT", "spot"),  # node label, its value, taint key
        "gcp": ("cloud.google.com/gke-spot", "true", "cloud.google.com/gke-spot")}  # (taint value: "true")
SPOT_GROUPS = (("RayCluster", "ganray"), ("RayJob", "ganray-train"))


def _group(doc: dict, name: str) -> dict:
    return next(g for g in cluster_spec(doc)["workerGroupSpecs"] if g["groupName"] == name)


def _agent_args(docs) -> list[str]:
    return find(docs, "DaemonSet", "ganray-notice-agent")["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_spot_gpu_workers_scale_from_zero_and_outlast_the_notice(overlay):
    docs = render(f"overlays/{overlay}")
    label, value, taint = SPOT[overlay]
    args = _agent_args(docs)
    assert args[args.index("--provider") + 1] == overlay
    deadline = NOTICE_S[overlay] - float(args[args.index("--margin-s") + 1])
    for kind, name in SPOT_GROUPS:
        doc = find(docs, kind, name)
        assert cluster_spec(doc)["enableInTreeAutoscaling"] is True
        group = _group(doc, "spot-gpu")
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        pod = group["template"]["spec"]
        assert pod["nodeSelector"] == {label: value}
        assert {"key": taint, "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert pod["terminationGracePeriodSeconds"] > NOTICE_S[overlay] > deadline > 0
        assert "preStop" in pod["containers"][0]["lifecycle"]  # else SIGTERM stops Ray at once
    assert _same_shape(_group(find(docs, *SPOT_GROUPS[0]), "spot-gpu"), "ganray") == _same_shape(
        _group(find(docs, *SPOT_GROUPS[1]), "spot-gpu"), "ganray-train")


def _same_shape(group: dict, cluster: str) -> dict:
    """A worker group with its cluster's own names (its token's Secret, its pods' cluster label) made generic."""
    text = yaml.safe_dump(group).replace(f"{cluster}-ray-token", "CLUSTER-ray-token")
    return yaml.safe_load(text.replace(f"ganray.io/ray-cluster: {cluster}\n", "ganray.io/ray-cluster: CLUSTER\n"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_spot_ray_workers_and_the_agent_go_to_spot_nodes(overlay):
    docs = render(f"overlays/{overlay}")
    taint = SPOT[overlay][2]
    on_spot = {where for doc in docs for where, t in pod_templates(doc)
               if any(tol.get("key") == taint for tol in t["spec"].get("tolerations", []))}
    assert on_spot == {"RayCluster/ganray spot-gpu", "RayJob/ganray-train spot-gpu",
                       "DaemonSet/ganray-notice-agent"}
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            assert cluster_spec(doc)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_notice_agent_sees_the_host_and_nothing_of_the_kubernetes_api(overlay):
    docs = render(f"overlays/{overlay}")
    ds = find(docs, "DaemonSet", "ganray-notice-agent")["spec"]["template"]["spec"]
    label, value, _ = SPOT[overlay]
    assert ds["nodeSelector"] == {label: value}
    # No host PIDs: the Ray node's address comes from its files on the host, never from a process's command line.
    assert ds["hostNetwork"] is True and not ds.get("hostPID") and ds["automountServiceAccountToken"] is False
    assert find(docs, "ServiceAccount", ds["serviceAccountName"])["automountServiceAccountToken"] is False
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    # The agent and the spot Ray workers share the host's /tmp/ray, where the raylet keeps its sockets.
    mounts = {(v["hostPath"]["path"], m["mountPath"]) for doc in docs for _, t in pod_templates(doc)
              for v in t["spec"].get("volumes", []) if "hostPath" in v
              for c in t["spec"]["containers"] for m in c.get("volumeMounts", []) if m["name"] == v["name"]}
    assert mounts == {("/var/lib/ganray/ray", "/tmp/ray")}
    for kind, name in SPOT_GROUPS:
        assert _group(find(docs, kind, name), "spot-gpu")["template"]["spec"]["hostNetwork"] is True


@pytest.mark.parametrize("target", TARGETS)
def test_token_auth_is_on_in_every_ray_container(target):
    docs = render(target)
    ray = [(w, c) for w, c in containers(docs) if w.split("/")[0] in RAY_KINDS or "notice-agent" in w]
    ray = [(w, c) for w, c in ray if c["name"] != "ray-tmp"]
    assert len(ray) == 7
    for where, c in ray:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
    # Each cluster's own token (tests/test_hostile_k8s.py); the agent reads that of the node on its VM from the host.
    agent = next(c for w, c in ray if "notice-agent" in w)
    assert not {e["name"] for e in agent["env"]} & {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert {cluster_spec(d)["rayVersion"] for d in docs if d["kind"] in RAY_KINDS} == {pins["ray"]}


def test_the_rayjob_trains_the_spec_in_its_configmap():
    docs = render("overlays/aws")
    job = find(docs, "RayJob", "ganray-train")["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["backoffLimit"] >= 1
    assert job["suspend"] is True  # started by hand once the dataset is in the bucket
    program, command, path = shlex.split(job["entrypoint"])
    assert (program, command) == ("ganray", "run")
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    data = find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    spec = parse_spec(yaml.safe_load(data[path[len(mount["mountPath"]) + 1:]]))
    worker = _group(find(docs, "RayJob", "ganray-train"), "spot-gpu")
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert 0 < spec.scaling.gpus_per_worker <= limits["nvidia.com/gpu"]
    assert spec.scaling.cpus_per_worker <= float(limits["cpu"])
    assert max(spec.scaling.allowed_worker_counts()) <= worker["maxReplicas"]
    assert spec.checkpoint.storage and spec.checkpoint.storage.startswith("s3://")  # no local stack there
    serve = yaml.safe_load(find(docs, "RayService", "ganray-serve")["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["model"] == f"{spec.model_name}@champion"


def test_the_serve_config_is_one_ray_serve_accepts():
    from ray.serve.schema import ServeDeploySchema

    for target in TARGETS:
        raw = yaml.safe_load(find(render(target), "RayService", "ganray-serve")["spec"]["serveConfigV2"])
        app = ServeDeploySchema.model_validate(raw).applications[0]
        # every ServeConfig field is documented there (tests/test_k8s_rayservice.py checks them one by one)
        assert (app.import_path, app.args["model"]) == ("deploy.app:build_app", "anime-gen@champion")
    with pytest.raises(ValueError):
        ServeDeploySchema.model_validate({"applications": [{"name": "a", "importPath": "deploy.app:build_app"}]})


@pytest.mark.parametrize("target", TARGETS)
def test_mlflow_runs_behind_basic_auth_on_postgres_with_artifacts_in_the_bucket(target):
    docs = render(target)
    service = find(docs, "Service", "mlflow")["spec"]
    assert service["ports"][0]["port"] == 5000
    env_config = find(docs, "ConfigMap", "ganray-env")["data"]
    assert env_config["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env_config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    server = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.split("=", 1) for a in server["args"])
    assert args["--app-name"] == "basic-auth"
    assert args["--artifacts-destination"] == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert args["--backend-store-uri"].startswith("postgresql://mlflow@postgres:5432/")
    assert find(docs, "Service", "postgres")["spec"]["ports"][0]["port"] == 5432
    auth_ini = find(docs, "ConfigMap", "mlflow-auth")["data"]["basic_auth.ini"]
    assert "database_uri = postgresql://mlflow@postgres:5432/mlflow_auth" in auth_ini
    assert re.search(r"(?m)^default_permission = NO_PERMISSIONS$", auth_ini)  # a user reaches only what is granted
    assert "CREATE DATABASE mlflow_auth" in find(docs, "ConfigMap", "postgres-init")["data"]["create-auth-db.sql"]
    env = {e["name"] for e in server["env"]}
    assert {"PGPASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_CONFIG_PATH"} <= env


def test_the_mlflow_users_job_grants_on_the_experiment_and_the_model_the_jobs_use():
    from orchestrator.job.runs import EXPERIMENT

    docs = render("overlays/aws")
    job = find(docs, "Job", "ganray-mlflow-users")
    argv = job["spec"]["template"]["spec"]["containers"][0]["command"] + \
        job["spec"]["template"]["spec"]["containers"][0].get("args", [])
    spec = parse_spec(yaml.safe_load(find(docs, "ConfigMap", "ganray-job-spec")["data"]["job.yaml"]))
    serve = yaml.safe_load(find(docs, "RayService", "ganray-serve")["spec"]["serveConfigV2"])
    assert argv[argv.index("--experiment") + 1] == EXPERIMENT
    assert argv[argv.index("--model") + 1] == spec.model_name == serve["applications"][0]["args"]["model"].split("@")[0]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure" and job["spec"]["ttlSecondsAfterFinished"] > 0
