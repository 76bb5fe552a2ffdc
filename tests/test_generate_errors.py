"""`ganray generate` refuses what it cannot do with one clear line, through the CLI against the real MLflow
server of the stack: a count out of 1..1024, a malformed or missing model, and a model stored as a pickle
(which would run code as it loads) even where MLflow's environment allows pickles."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, cli_env, cli_refused, ganray


@pytest.mark.parametrize("n", ["0", "-3", "1025", "100000"])
def test_a_count_outside_1_to_1024_iscli_refused(stack, ganray_home, tmp_path, n):
    proc = ganray(ganray_home, "generate", "models:/any-model/1", "--n", n, "--out", str(tmp_path / "x.png"),
                  check=False)
    cli_refused(proc, 1, "n must be between 1 and 1024", f"got {n}")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("uri", ["models:/", "models://1", "runs:/abc/generator"])
def test_a_malformed_model_uri_is_a_usage_error(stack, ganray_home, tmp_path, uri):
    proc = ganray(ganray_home, "generate", uri, "--n", "2", "--out", str(tmp_path / "x.png"), check=False)
    cli_refused(proc, 2, repr(uri))


def test_a_missing_model_is_named(stack, ganray_home, tmp_path):
    proc = ganray(ganray_home, "generate", "models:/no-such-generator/3", "--n", "2", "--out",
                  str(tmp_path / "x.png"), check=False)
    cli_refused(proc, 1, "no registered model 'no-such-generator' at ")


class _Planted(torch.nn.Module):
    """A 'generator' whose pickle runs a command that leaves a marker file when it is loaded."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _register_planted(tracking_uri: str, name: str, marker: Path) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    planted = _Planted()
    planted.marker = str(marker)
    with mlflow.start_run(run_name="planted"):
        info = mlflow.pytorch.log_model(planted, name="generator", serialization_format="pickle",
                                        pip_requirements=["torch"])
    version = mlflow.register_model(info.model_uri, name).version
    marker.unlink(missing_ok=True)  # whatever logging did; from here on nothing may create it
    return f"models:/{name}/{version}"


def test_a_pickle_format_model_is_refused_and_runs_nothing(stack, ganray_home, tracking_uri, tmp_path):
    marker = tmp_path / "MARKER"
    uri = _register_planted(tracking_uri, "planted-pickle", marker)
    env = {**cli_env(ganray_home), "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}  # ganray refuses anyway
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), "generate", uri, "--n", "2", "--out",
                           str(tmp_path / "x.png")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    cli_refused(proc, 1, uri, "not stored in the pt2 format", "model.pth", "could run code")
    assert not marker.exists() and not (tmp_path / "x.png").exists()
