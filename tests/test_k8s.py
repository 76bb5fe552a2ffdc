"""The Kubernetes manifests (k8s/) render and validate offline, and carry no secret.

Built-in kinds are checked against the Kubernetes schema (kubernetes-validate, strict: an unknown
field is an error); the Ray kinds against k8s/schema/ray.io_v1.schema.json, and their pod
templates and head services against the Kubernetes schema. The helpers here are shared by the
other tests/test_k8s_*.py modules.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("aws", "gcp")
TARGETS = ("base", *(f"overlays/{o}" for o in OVERLAYS))
RAY_KINDS = ("RayCluster", "RayJob", "RayService")
# Kubernetes minors to validate against: one EKS and GKE both offered when this was written, and the
# newest kubernetes-validate knows.
K8S_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
SECRET_TEMPLATES = K8S / "secrets" / "secrets.template.yaml"


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
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return [(name, doc["spec"]["template"])]
    return []


def containers(docs) -> list[tuple[str, dict]]:
    """(where, container) of every container and init container of every workload."""
    return [(f"{where} {c['name']}", c) for doc in docs for where, t in pod_templates(doc)
            for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]


def kubernetes_errors(doc: dict) -> list[str]:
    """Errors of a built-in object against the Kubernetes schema (strict), as short lines."""
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{doc['kind']}/{doc['metadata'].get('name')} ({version}): {err.message} at {list(err.path)}")
    return errors


def ray_errors(doc: dict) -> list[str]:
    """Errors of a Ray object: the ray.io/v1 subset schema, then its pod templates and head service."""
    schema = json.loads((K8S / "schema" / "ray.io_v1.schema.json").read_text())
    errors = [f"{doc['kind']}: {e.message} at {list(e.path)}"
              for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
    if errors:
        return errors
    for where, template in pod_templates(doc):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        errors += [f"{where}: {e}" for e in kubernetes_errors(wrapped)]
    head_service = cluster_spec(doc)["headGroupSpec"].get("headService")
    if head_service:
        errors += kubernetes_errors({"apiVersion": "v1", "kind": "Service", **head_service})
    return errors


def errors_of(doc: dict) -> list[str]:
    return ray_errors(doc) if doc["apiVersion"] == "ray.io/v1" else kubernetes_errors(doc)


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_validates(target):
    docs = render(target)
    assert {"RayCluster", "RayJob", "RayService", "DaemonSet", "Deployment", "StatefulSet"} <= {
        d["kind"] for d in docs}
    assert [e for d in docs for e in errors_of(d)] == []


def test_every_manifest_file_validates_on_its_own():
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = [K8S / "base" / f for f in base["resources"]] + [SECRET_TEMPLATES]
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    assert len(docs) >= len(files)
    assert [e for d in docs for e in errors_of(d)] == []


def test_the_validators_catch_typos():
    rc = find(render("base"), "RayCluster")
    typo = copy.deepcopy(rc)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = typo["spec"]["workerGroupSpecs"][0].pop("minReplicas")
    assert any("minReplica" in e for e in ray_errors(typo))
    number = copy.deepcopy(rc)
    number["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # KubeRay wants strings
    assert ray_errors(number)
    in_pod = copy.deepcopy(rc)
    in_pod["spec"]["workerGroupSpecs"][0]["template"]["spec"]["hostNetwrk"] = True
    assert any("hostNetwrk" in e for e in ray_errors(in_pod))
    job = copy.deepcopy(find(render("base"), "RayJob"))
    job["spec"]["clusterSelector"] = {"ray.io/cluster": "ganray"}  # KubeRay: not with rayClusterSpec
    assert ray_errors(job)
    kept = copy.deepcopy(find(render("base"), "RayJob"))
    kept["spec"]["shutdownAfterJobFinishes"] = False  # KubeRay suspends only a job that shuts down
    assert kept["spec"]["suspend"] is True and ray_errors(kept)
    ds = copy.deepcopy(find(render("base"), "DaemonSet"))
    ds["spec"]["template"]["spec"]["hostPid"] = True
    assert any("hostPid" in e for e in kubernetes_errors(ds))


def _secret_templates() -> list[dict]:
    return [d for d in yaml.safe_load_all(SECRET_TEMPLATES.read_text()) if d]


def test_secret_templates_have_keys_and_no_values():
    templates = _secret_templates()
    assert {t["metadata"]["name"] for t in templates} == {
        "ganray-ray-token", "ganray-s3", "ganray-mlflow", "ganray-postgres"}
    for t in templates:
        assert t["kind"] == "Secret" and "data" not in t and t["stringData"]
        assert set(t["stringData"].values()) == {""}, t["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_referenced_never_written(target):
    docs = render(target)
    assert not [d for d in docs if d["kind"] == "Secret"]  # created by hand, never applied from here
    keys = {(t["metadata"]["name"], k) for t in _secret_templates() for k in t["stringData"]}
    used = set()
    for where, c in containers(docs):
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                used.add((ref["name"], ref["key"]))
            elif re.search(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|KEY_ID", env["name"]):
                raise AssertionError(f"{where}: {env['name']} is not read from a Secret")
    assert used and used <= keys, sorted(used - keys)
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert not [k for k in d["data"] if re.search(r"TOKEN|PASSWORD|SECRET|KEY_ID", k)], d["data"]
    ray_auth = {cluster_spec(d)["authOptions"]["secretName"] for d in docs if d["kind"] in RAY_KINDS}
    assert ray_auth == {"ganray-ray-token"} and ("ganray-ray-token", "auth_token") in keys


LITERAL_SECRETS = [
    (r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@", "credentials in a URL"),
    (r"AKIA[0-9A-Z]{16}", "an AWS access key id"),
    (r"(?i)(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{12,}", "a literal password, secret or token"),
]


def test_no_literal_secret_anywhere():
    files = [p for p in K8S.rglob("*") if p.is_file()] + [ROOT / "docs" / "cluster.md", ROOT / "Dockerfile"]
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in files}
    texts.update({f"rendered {t}": yaml.safe_dump_all(render(t)) for t in TARGETS})
    found = [f"{name}: {what}: {m.group(0)[:40]}" for name, text in texts.items()
             for pattern, what in LITERAL_SECRETS for m in re.finditer(pattern, text)]
    assert found == []
    assert re.search(LITERAL_SECRETS[0][0], "postgresql://mlflow:hunter2hunter2@postgres/mlflow")
    assert re.search(LITERAL_SECRETS[2][0], "admin_password: 'Zx9vQw3rTy7uIo'")
