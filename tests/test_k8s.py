"""The Kubernetes manifests (k8s/) render and validate offline, and carry no secret.

Built-in kinds are checked against the Kubernetes schema (kubernetes-validate, strict: an unknown
field is an error); the Ray kinds against k8s/schema/ray.io_v1.schema.json, and their pod
templates and head services against the Kubernetes schema. Rendering and reading the manifests
(tests/k8s_manifests.py) is shared with the other tests/test_k8s_*.py modules.
"""
from __future__ import annotations

import copy
import json
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from k8s_manifests import K8S, RAY_KINDS, TARGETS, cluster_spec, find, pod_templates, render, secret_reads

# Kubernetes minors to validate against: one EKS and GKE both offered when this was written, and the
# newest kubernetes-validate knows.
K8S_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
SECRET_TEMPLATES = K8S / "secrets" / "secrets.template.yaml"


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
    assert {"RayCluster", "RayJob", "RayService", "DaemonSet", "Deployment", "StatefulSet", "Job", "ServiceAccount",
            "NetworkPolicy"} <= {d["kind"] for d in docs}
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
        "ganray-ray-token", "ganray-train-ray-token", "ganray-serve-ray-token", "ganray-serve-token", "ganray-s3",
        "ganray-mlflow", "ganray-mlflow-train", "ganray-mlflow-serve", "ganray-postgres"}
    for t in templates:
        assert t["kind"] == "Secret" and "data" not in t and t["stringData"]
        assert set(t["stringData"].values()) == {""}, t["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_referenced_never_written(target):
    docs = render(target)
    assert not [d for d in docs if d["kind"] == "Secret"]  # created by hand, never applied from here
    keys = {(t["metadata"]["name"], k) for t in _secret_templates() for k in t["stringData"]}
    used = set()
    for doc in docs:
        for where, template in pod_templates(doc):
            for c in template["spec"]["containers"] + template["spec"].get("initContainers", []):
                used |= secret_reads(template, c)
                for env in c.get("env", []):
                    if "valueFrom" in env or not re.search(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|KEY_ID", env["name"]):
                        continue
                    # Not from a Secret: empty (a placeholder), or the path of a file a Secret volume holds.
                    assert env.get("value") == "" or _in_a_secret_mount(template, c, env), f"{where}: {env['name']}"
    assert used and used <= keys, sorted(used - keys)
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert not [k for k in d["data"] if re.search(r"TOKEN|PASSWORD|SECRET|KEY_ID", k)], d["data"]
    ray_auth = [cluster_spec(d)["authOptions"]["secretName"] for d in docs if d["kind"] in RAY_KINDS]
    assert len(set(ray_auth)) == 3 and {(s, "auth_token") for s in ray_auth} <= keys


def _in_a_secret_mount(template: dict, container: dict, env: dict) -> bool:
    secret_volumes = {v["name"] for v in template["spec"].get("volumes", []) if "secret" in v}
    return re.search(r"_(PATH|FILE)$", env["name"]) is not None and any(
        env.get("value", "").startswith(m["mountPath"] + "/") for m in container.get("volumeMounts", [])
        if m["name"] in secret_volumes)


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
