"""The Kubernetes manifests hold together: KubeRay v1, spot workers with the agent, grace > notice."""
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[1] / "k8s"


def test_raycluster_spot_group_runs_the_agent_with_a_grace_period_longer_than_the_notice():
    rc = yaml.safe_load((K8S / "raycluster.yaml").read_text())
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    spot = rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    agent = next(c for c in spot["containers"] if c["name"] == "notice-agent")
    assert agent["command"][:3] == ["ganray", "agent", "--provider"]
    margin = float(agent["command"][agent["command"].index("--margin-s") + 1])
    assert spot["terminationGracePeriodSeconds"] > 120 > margin  # AWS gives 120 s of notice
    for c in spot["containers"]:
        names = {e["name"] for e in c["env"]}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= names  # token auth stays on
        token = next(e for e in c["env"] if e["name"] == "RAY_AUTH_TOKEN")
        assert "secretKeyRef" in token["valueFrom"]  # never a literal secret


def test_daemonset_agent_uses_the_host_network():
    ds = yaml.safe_load((K8S / "notice-agent-daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert ds["kind"] == "DaemonSet" and spec["hostNetwork"] is True
    assert spec["containers"][0]["command"][1] == "agent"
