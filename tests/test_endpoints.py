"""Where the cluster is: one resolver, one answer per environment, for every command (no servers needed).

Before it there were two dashboard rules: ``job_api.dashboard_address`` (submit/logs/stop/list/status:
--address, else an http(s) RAY_ADDRESS, else the stack's dashboard, refusing another cluster's GCS
RAY_ADDRESS) and ``serving.dashboard_address`` (serve: RAY_DASHBOARD_ADDRESS, else the stack's when on
it, else an http RAY_ADDRESS), and two local-stack checks (``job_api.is_local_stack`` by dashboard URL,
``serving.on_local_stack`` by Ray address). The rows where they disagreed say what each said.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

STACK = {"ray_address": "127.0.0.1:6379", "dashboard_url": "http://127.0.0.1:8265",
         "mlflow_uri": "http://127.0.0.1:5000", "s3_endpoint": "http://127.0.0.1:9000", "storage_root": "s3://ganray"}
STACK_RAY, STACK_DASH, STACK_MLFLOW, STACK_S3 = (STACK[k] for k in ("ray_address", "dashboard_url", "mlflow_uri",
                                                                     "s3_endpoint"))
GCS_REFUSED = "!RAY_ADDRESS=head:6379 is a cluster's GCS address, not its dashboard: set RAY_DASHBOARD_ADDRESS="

# (case, stack running, environment, --address) -> (Ray address, dashboard or "!error", named, MLflow URI, S3, local)
ROWS = [
    ("nothing set: the stack", True, {}, None,
     (STACK_RAY, STACK_DASH, False, STACK_MLFLOW, STACK_S3, True)),
    # Old endpoints.local said False here (RAY_ADDRESS was set), so serving.on_local_stack had to check again.
    ("RAY_ADDRESS is the stack's, as the CLI applies it", True, {"RAY_ADDRESS": STACK_RAY}, None,
     (STACK_RAY, STACK_DASH, False, STACK_MLFLOW, STACK_S3, True)),
    ("an http RAY_ADDRESS is a dashboard", True, {"RAY_ADDRESS": "http://head:8265/"}, None,
     ("http://head:8265/", "http://head:8265", True, STACK_MLFLOW, STACK_S3, False)),
    # job_api: ClusterError "pass its dashboard instead"; serving: UsageError "set RAY_DASHBOARD_ADDRESS".
    ("another cluster's GCS RAY_ADDRESS names no dashboard", True, {"RAY_ADDRESS": "head:6379"}, None,
     ("head:6379", GCS_REFUSED, False, STACK_MLFLOW, STACK_S3, False)),
    # job_api: refused (a GCS RAY_ADDRESS of another cluster); serving: http://head:8265.
    ("RAY_DASHBOARD_ADDRESS beside a GCS RAY_ADDRESS", True,
     {"RAY_ADDRESS": "head:6379", "RAY_DASHBOARD_ADDRESS": "http://head:8265"}, None,
     ("head:6379", "http://head:8265", True, STACK_MLFLOW, STACK_S3, False)),
    # job_api: the stack's dashboard (it never read RAY_DASHBOARD_ADDRESS); serving: http://other:8265.
    ("RAY_DASHBOARD_ADDRESS beats the stack's dashboard", True, {"RAY_DASHBOARD_ADDRESS": "http://other:8265"}, None,
     (STACK_RAY, "http://other:8265", True, STACK_MLFLOW, STACK_S3, True)),
    # job_api: http://a:8265 (RAY_ADDRESS); serving: http://b:8265 (RAY_DASHBOARD_ADDRESS).
    ("RAY_DASHBOARD_ADDRESS beats an http RAY_ADDRESS", True,
     {"RAY_ADDRESS": "http://a:8265", "RAY_DASHBOARD_ADDRESS": "http://b:8265"}, None,
     ("http://a:8265", "http://b:8265", True, STACK_MLFLOW, STACK_S3, False)),
    # job_api: http://x:8265; serving (no --address) http://b:8265.
    ("--address beats everything", True, {"RAY_DASHBOARD_ADDRESS": "http://b:8265", "RAY_ADDRESS": "http://a:8265"},
     "http://x:8265", ("http://a:8265", "http://x:8265", True, STACK_MLFLOW, STACK_S3, False)),
    # job_api.is_local_stack: True (its dashboard URL); serving.on_local_stack: False (not the profile's Ray address),
    # so `serve` bound 0.0.0.0 and skipped the free-port check on this machine.
    ("an http RAY_ADDRESS that is the stack's dashboard is the stack", True, {"RAY_ADDRESS": STACK_DASH + "/"}, None,
     (STACK_DASH + "/", STACK_DASH, True, STACK_MLFLOW, STACK_S3, True)),
    ("--address must be a URL", True, {}, "head:8265",
     (STACK_RAY, "!--address head:8265: expected the dashboard's URL, e.g. http://HEAD:8265", True, STACK_MLFLOW,
      STACK_S3, True)),
    ("RAY_DASHBOARD_ADDRESS must be a URL", True, {"RAY_DASHBOARD_ADDRESS": "head:8265"}, None,
     (STACK_RAY, "!RAY_DASHBOARD_ADDRESS head:8265: expected the dashboard's URL", True, STACK_MLFLOW, STACK_S3, True)),
    ("another cluster's tracking server and S3", True,
     {"MLFLOW_TRACKING_URI": "https://mlflow.corp", "AWS_ENDPOINT_URL": "https://minio:9000"}, None,
     (STACK_RAY, STACK_DASH, False, "https://mlflow.corp", "https://minio:9000", True)),
    ("AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL", True,
     {"AWS_ENDPOINT_URL_S3": "https://s3.corp", "AWS_ENDPOINT_URL": "https://minio:9000"}, None,
     (STACK_RAY, STACK_DASH, False, STACK_MLFLOW, "https://s3.corp", True)),
    ("no stack, nothing set", False, {}, None,
     (None, "!no Ray dashboard: set RAY_DASHBOARD_ADDRESS (or RAY_ADDRESS) to http://HEAD:8265", False, None, None,
      False)),
    ("no stack, a remote cluster by its GCS address", False,
     {"RAY_ADDRESS": "head:6379", "MLFLOW_TRACKING_URI": "https://mlflow.corp",
      "AWS_ENDPOINT_URL_S3": "https://s3.corp"}, None,
     ("head:6379", GCS_REFUSED, False, "https://mlflow.corp", "https://s3.corp", False)),
    ("no stack, a remote cluster by its dashboard", False, {"RAY_ADDRESS": "https://head.corp:8265"}, None,
     ("https://head.corp:8265", "https://head.corp:8265", True, None, None, False)),
]


@pytest.fixture
def home(tmp_path):
    """A GANRAY_HOME with the stack's profile (as `ganray local up` writes it) and one without a stack."""
    running, empty = tmp_path / "stack", tmp_path / "none"
    running.mkdir()
    empty.mkdir()
    (running / "profile.json").write_text(json.dumps(STACK))
    return {True: running, False: empty}


@pytest.mark.parametrize("case, stack, env, address, want", ROWS, ids=[r[0] for r in ROWS])
def test_one_resolver_answers_every_endpoint(home, monkeypatch, case, stack, env, address, want):
    from orchestrator.cluster.endpoints import ClusterError, resolve_endpoints
    from trainers.data.storage import s3_endpoint

    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[stack]), **env})
    ray, dashboard, named, mlflow, s3, local = want
    got = resolve_endpoints(address=address)
    assert (got.ray_address, got.mlflow_uri, got.s3_endpoint, got.local) == (ray, mlflow, s3, local)
    assert got.s3_endpoint == s3_endpoint(), "the workers' rule and the driver's are one"
    if dashboard.startswith("!"):
        with pytest.raises(ClusterError) as err:
            got.dashboard_url()
        assert str(err.value).startswith(dashboard[1:]) and "\n" not in str(err.value)
        assert err.value.exit_code == 1
        if named:  # a malformed --address / RAY_DASHBOARD_ADDRESS is refused by status too
            with pytest.raises(ClusterError):
                got.named_dashboard()
        else:
            assert got.named_dashboard() is None
    else:
        assert got.dashboard_url() == dashboard
        assert got.named_dashboard() == (dashboard if named else None)


def test_the_storage_root_comes_from_the_environment_first(home, monkeypatch):
    from orchestrator.cluster.endpoints import resolve_endpoints

    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[True])})
    assert resolve_endpoints().storage_root == "s3://ganray"
    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[True]), "GANRAY_STORAGE_ROOT": "s3://mine"})
    assert resolve_endpoints().storage_root == "s3://mine"
    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[False])})
    assert resolve_endpoints().storage_root is None


def test_the_local_stack_is_known_by_its_ray_address_or_its_dashboard(home, monkeypatch):
    from orchestrator.cluster.endpoints import is_local_stack

    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[True])})
    assert is_local_stack(STACK_RAY) and is_local_stack(STACK_DASH) and is_local_stack(STACK_DASH + "/")
    assert not is_local_stack("head:6379") and not is_local_stack("http://head:8265") and not is_local_stack(None)
    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[False])})
    assert not is_local_stack(STACK_RAY) and not is_local_stack(STACK_DASH) and not is_local_stack("")


def test_the_ray_token_the_environment_first_the_stacks_file_only_for_its_dashboard(home, monkeypatch, tmp_path):
    from orchestrator.cluster.tokens import ray_headers, ray_token

    (home[True] / "ray").mkdir()
    (home[True] / "ray" / "auth_token").write_text("stack-token\n")
    (tmp_path / "mine").write_text("file-token")
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "nobody")  # no ~/.ray/auth_token
    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[True])})
    assert ray_token(True) == "stack-token" and ray_token(False) is None
    assert ray_token(False, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "mine")}) == "file-token"
    both = {"RAY_AUTH_TOKEN": " env-token ", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "mine")}
    assert ray_token(True, both) == "env-token"
    (tmp_path / "nobody" / ".ray").mkdir(parents=True)
    (tmp_path / "nobody" / ".ray" / "auth_token").write_text("ray-default")
    assert ray_token(False) == "ray-default" and ray_token(True) == "stack-token"
    assert ray_headers("t") == {"Authorization": "Bearer t"} and ray_headers(None) == {}


@pytest.mark.parametrize("uri, refused", [
    (None, "no MLflow tracking server: set MLFLOW_TRACKING_URI"),
    ("https://user:pw@mlflow.corp", "MLFLOW_TRACKING_URI holds credentials"),
    ("https://mlflow.corp", None),
])
def test_the_replicas_get_the_tracking_uri_without_credentials(home, monkeypatch, uri, refused):
    from orchestrator.cluster.endpoints import resolve_endpoints
    from trainers.errors import UsageError

    env = {"MLFLOW_TRACKING_URI": uri} if uri else {}
    monkeypatch.setattr(os, "environ", {"GANRAY_HOME": str(home[False]), **env})
    endpoints = resolve_endpoints()
    if refused is None:
        assert endpoints.replica_tracking_uri() == uri
        return
    with pytest.raises(UsageError, match=refused) as err:
        endpoints.replica_tracking_uri()
    assert "pw" not in str(err.value)


def test_the_driver_asks_the_train_controller_to_poll_every_half_second_unless_told(monkeypatch):
    """Ray Train's controller drains reports and notices a finished or failed group each poll (2 s by
    default); ganray's driver sets 0.5 s before it connects, and a value in the environment wins."""
    from orchestrator.cluster.endpoints import ClusterError
    from orchestrator.job.ray_runtime import CONTROLLER_POLL, ray_init

    name, _ = CONTROLLER_POLL
    for given, want in ((None, "0.5"), ("3", "3")):
        if given is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, given)
        with pytest.raises(ClusterError, match="no Ray cluster"):
            ray_init(None)
        assert os.environ[name] == want
