"""Settings and endpoints: one table of variables, the environment first, the caller's environment kept."""
from __future__ import annotations

import json
import os

import pytest

from trainers import settings


def test_get_refuses_a_name_that_is_not_in_the_table():
    with pytest.raises(KeyError, match="add it to trainers/settings.py"):
        settings.get("GANRAY_NOT_A_SETTING")


def test_worker_env_carries_only_worker_side_variables_that_are_set():
    env = {"GANRAY_DECODE_WORKERS": "3", "GANRAY_SAMPLE_LOG": "/tmp/x", "GANRAY_HOME": "/home/me/.ganray",
           "GANRAY_STORAGE_ROOT": "s3://b", "GANRAY_DATA_CACHE": "", "AWS_SECRET_ACCESS_KEY": "no"}
    assert settings.worker_env(env) == {"GANRAY_DECODE_WORKERS": "3", "GANRAY_SAMPLE_LOG": "/tmp/x"}


def test_get_int_names_the_variable(monkeypatch):
    monkeypatch.setenv("GANRAY_DATA_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="GANRAY_DATA_CACHE_MB='lots' is not an integer"):
        settings.get_int("GANRAY_DATA_CACHE_MB")


def _profile(home, **kw):
    home.mkdir(parents=True, exist_ok=True)
    (home / "profile.json").write_text(json.dumps({"ray_address": "127.0.0.1:1", "mlflow_uri": "http://m:1",
                                                   "s3_endpoint": "http://s3:1", "storage_root": "s3://ganray",
                                                   **kw}))
    (home / "credentials.json").write_text(json.dumps({"access_key": "AK", "secret_key": "SK"}))


def test_endpoints_come_from_the_environment_first_then_the_stack(tmp_path, monkeypatch):
    from orchestrator.cluster.endpoints import resolve_endpoints

    _profile(tmp_path)
    clean = {"GANRAY_HOME": str(tmp_path)}
    monkeypatch.setattr(os, "environ", dict(clean))
    local = resolve_endpoints()
    assert (local.ray_address, local.mlflow_uri, local.s3_endpoint, local.local) == (
        "127.0.0.1:1", "http://m:1", "http://s3:1", True)
    assert local.env["AWS_SECRET_ACCESS_KEY"] == "SK" and local.env["RAY_AUTH_TOKEN_PATH"].startswith(str(tmp_path))
    remote = resolve_endpoints({**clean, "RAY_ADDRESS": "head:6379", "AWS_ENDPOINT_URL_S3": "https://minio:9000",
                                "MLFLOW_TRACKING_URI": "https://mlflow.corp"})
    assert (remote.ray_address, remote.mlflow_uri, remote.s3_endpoint, remote.local) == (
        "head:6379", "https://mlflow.corp", "https://minio:9000", False)
    assert not any(k.startswith(("AWS_", "RAY_")) for k in remote.env), "the stack's keys never go to another S3"


def test_applied_restores_the_callers_environment(tmp_path, monkeypatch):
    from orchestrator.cluster.endpoints import applied, resolve_endpoints

    _profile(tmp_path)
    monkeypatch.setenv("GANRAY_HOME", str(tmp_path))
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    before = dict(os.environ)
    with applied(resolve_endpoints()):
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://m:1" and os.environ["AWS_ACCESS_KEY_ID"] == "AK"
        assert os.environ["AWS_REGION"] == "eu-west-3"  # the caller's region is kept
    assert dict(os.environ) == before


def test_s3_checkpoint_storage_takes_the_region_from_the_environment(monkeypatch):
    from trainers.checkpoints.storage import resolve_storage

    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    storage = resolve_storage("s3://bucket/ckpt", None, "http://127.0.0.1:9")
    assert storage.filesystem.region == "eu-central-1" and storage.path == "bucket/ckpt"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert resolve_storage("s3://bucket/ckpt", None, "http://127.0.0.1:9").filesystem.region == "ap-south-1"


def test_registering_leaves_the_callers_environment_as_it_was(stack, tracking_uri, dataset, tmp_path, monkeypatch):
    """mlflow.set_tracking_uri/set_registry_uri write os.environ; a registration must not leave that behind
    (a process that starts children afterwards would send them to this tracking server)."""
    from orchestrator import tracking_server
    from orchestrator.job import runs
    from orchestrator.registry import versions
    from reporters import DirectoryReporter
    from specs import TINY_DCGAN, job_spec
    from trainers.checkpoints.format import generator_from_checkpoint
    from trainers.generator_metadata import GeneratorMetadata
    from trainers.loop import GanLoop

    for name in versions.URI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    spec = job_spec("env-kept", dataset, model=TINY_DCGAN, train={"steps": 1, "batch_size": 4},
                    checkpoint={"every_steps": 1})
    reporter = DirectoryReporter(tmp_path / "ckpt")
    GanLoop(spec).run(reporter)
    g, info = generator_from_checkpoint(reporter.checkpoints[-1])
    c = tracking_server.client(tracking_uri)
    run_id = runs.create_run(c, spec.to_dict(), spec.digest(), str(tmp_path / "ckpt"))
    before = dict(os.environ)
    version = versions.register_generator(c, run_id, "env-kept", g, GeneratorMetadata.from_checkpoint_info(info),
                                          spec.digest(), str(reporter.checkpoints[-1]))
    assert version == 1 and dict(os.environ) == before
