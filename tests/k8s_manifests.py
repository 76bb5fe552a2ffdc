"""The Kubernetes manifests (k8s/) as the k8s tests read them: rendered per target, and their objects,
pod templates and containers picked out. Shared by tests/test_k8s.py and tests/test_k8s_*.py.
"""
from __future__ import annotations

import functools
import shutil
import subprocess

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
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return [(name, doc["spec"]["template"])]
    return []


def containers(docs) -> list[tuple[str, dict]]:
    """(where, container) of every container and init container of every workload."""
    return [(f"{where} {c['name']}", c) for doc in docs for where, t in pod_templates(doc)
            for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]
