"""A registered version is untrusted input: whoever can register one must not run code where it is loaded.

Each hostile version is planted the way an attacker with write access to the registry would: an honest
generator's folder copied, one hostile piece added, logged as a new run's artifact and registered with
MLflow's client (``create_model_version``) on the session's real MLflow server. Then it is loaded through
every entry point that loads a version: ``deploy.loader.load_named`` (what the replicas and ``generate``
use) and ``ganray generate`` through the CLI. The planted code writes a marker file when it runs; the
marker is the evidence that it did not.
"""
from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, cli_env, ganray
from stack_mlflow import mlflow_client, register_untrained

MODEL = "hostile-registry"
# json and torch are the names the issue names; the others are top-level modules a fresh process first
# imports while MLflow loads a pt2 model (torch.export pulls them in), so a planted copy would run there.
PLANTED_MODULES = ("json", "torch", "sympy", "networkx", "mpmath", "filelock")


@pytest.fixture(scope="module")
def client(stack, ganray_home):
    """The stack's MLflow client. This process imports the planted module names first, so that a planted
    copy cannot replace them here for later tests (the CLI tests show one would run in a fresh process)."""
    for name in PLANTED_MODULES:
        importlib.import_module(name)
    return mlflow_client(ganray_home)


@pytest.fixture(scope="module")
def honest(client, tmp_path_factory) -> dict:
    """An honest untrained generator registered as version 1 of MODEL, and its downloaded folder."""
    import mlflow

    version = register_untrained(client, MODEL, "dcgan", [], seed=7)
    stored = client.get_model_version_download_uri(MODEL, str(version))
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=str(tmp_path_factory.mktemp("honest")),
                                                      tracking_uri=client.tracking_uri))
    return {"version": version, "folder": folder}


def _plant(client, honest: dict, tmp_path: Path, edit) -> str:
    """A copy of the honest folder, changed by edit(folder), registered as a new version of MODEL through
    MLflow's client; its models:/ URI."""
    folder = tmp_path / "planted"
    shutil.copytree(honest["folder"], folder)
    edit(folder)
    exp = client.get_experiment_by_name("hostile-registry")
    run = client.create_run(exp.experiment_id if exp else client.create_experiment("hostile-registry"))
    client.log_artifacts(run.info.run_id, str(folder), "generator")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(MODEL, f"{run.info.artifact_uri}/generator", run.info.run_id)
    return f"models:/{MODEL}/{mv.version}"


def _edit_mlmodel(folder: Path, change) -> None:
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    change(mlmodel)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def _plant_code(folder: Path, marker: Path) -> None:
    """A code/ folder whose modules, shadowing real ones, write marker when imported."""
    (folder / "code").mkdir()
    for name in PLANTED_MODULES:
        (folder / "code" / f"{name}.py").write_text(
            f"with open({str(marker)!r}, 'a') as f:\n    f.write({name!r} + '\\n')\n")


def _code_in_flavor(flavor: str):
    def change(mlmodel: dict) -> None:
        mlmodel["flavors"][flavor]["code"] = "code"
    return change


def _code_at_top(mlmodel: dict) -> None:
    mlmodel["code"] = "code"


CODE_PLANTS = {
    "pytorch-flavor-code-entry": _code_in_flavor("pytorch"),
    "python-function-flavor-code-entry": _code_in_flavor("python_function"),
    "top-level-code-entry": _code_at_top,
    "code-folder-only": lambda mlmodel: None,
}


def _load_refused(client, uri: str, *words: str) -> str:
    """load_named's LoadError for uri, with the words in it; sys.path as it was."""
    from deploy.loader import LoadError, load_named
    from trainers.model_ref import ModelRef

    path_before = list(sys.path)
    name, version = uri.removeprefix("models:/").split("/")
    with pytest.raises(LoadError) as caught:
        load_named(client, ModelRef(name, version=int(version)))
    assert sys.path == path_before
    message = str(caught.value)
    assert all(w in message for w in words), message
    return message


def _cli_refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert err and err[-1].startswith("ganray: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert all(w in err[-1] for w in words), err[-1]
    return err[-1]


@pytest.mark.parametrize("plant", list(CODE_PLANTS))
def test_a_version_carrying_code_is_refused_before_it_loads(client, honest, tmp_path, plant):
    marker = tmp_path / "MARKER"

    def edit(folder: Path) -> None:
        _plant_code(folder, marker)
        _edit_mlmodel(folder, CODE_PLANTS[plant])

    uri = _plant(client, honest, tmp_path, edit)
    message = _load_refused(client, uri, uri, "carries code", "code/")
    assert "could run" in message
    assert not marker.exists(), marker.read_text()


def test_generate_refuses_a_version_with_planted_code_and_runs_none_of_it(client, honest, ganray_home, tmp_path):
    marker, out = tmp_path / "MARKER", tmp_path / "x.png"

    def edit(folder: Path) -> None:
        _plant_code(folder, marker)
        _edit_mlmodel(folder, _code_in_flavor("pytorch"))

    uri = _plant(client, honest, tmp_path, edit)
    proc = ganray(ganray_home, "generate", uri, "--n", "2", "--out", str(out), check=False)
    _cli_refused(proc, uri, "carries code", "code/")
    assert not marker.exists(), f"the planted code ran: {marker.read_text()}"
    assert not out.exists()


def _outside_copy(honest: dict, where: Path) -> Path:
    """The honest version's data folder (a loadable model.pt2) copied to where, outside any model folder."""
    shutil.copytree(honest["folder"] / "data", where)
    return where


@pytest.mark.parametrize("how", ["dotdot-etc", "dotdot-to-a-pt2", "absolute-to-a-pt2"])
def test_model_data_outside_the_model_folder_is_refused(client, honest, tmp_path, how):
    # the loader downloads into $TMPDIR/ganray-model-XXXX/generator: ../../NAME is $TMPDIR/NAME
    outside = Path(tempfile.gettempdir()) / f"hostile-data-{uuid.uuid4().hex[:8]}"
    try:
        target = {"dotdot-etc": "../../etc", "dotdot-to-a-pt2": f"../../{outside.name}",
                  "absolute-to-a-pt2": str(outside)}[how]
        if how != "dotdot-etc":
            _outside_copy(honest, outside)

        def edit(folder: Path) -> None:
            _edit_mlmodel(folder, lambda m: m["flavors"]["pytorch"].update(model_data=target))

        uri = _plant(client, honest, tmp_path, edit)
        _load_refused(client, uri, uri, "model_data", repr(target), "outside the model folder")
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_generate_refuses_model_data_that_points_out_of_the_model_folder(client, honest, ganray_home, tmp_path):
    outside, out = _outside_copy(honest, tmp_path / "elsewhere"), tmp_path / "x.png"
    uri = _plant(client, honest, tmp_path,
                 lambda folder: _edit_mlmodel(folder, lambda m: m["flavors"]["pytorch"].update(model_data=str(outside))))
    proc = ganray(ganray_home, "generate", uri, "--n", "2", "--out", str(out), check=False)
    _cli_refused(proc, uri, "model_data", "outside the model folder")
    assert not out.exists()


@pytest.mark.parametrize("link", ["data-folder", "pt2-file"])
def test_a_symlink_out_of_the_model_folder_is_refused(honest, tmp_path, link):
    from trainers.safe_model import UnsafeModelError, check_pt2_model

    outside = _outside_copy(honest, tmp_path / "elsewhere")
    folder = tmp_path / "model"
    shutil.copytree(honest["folder"], folder)
    if link == "data-folder":
        shutil.rmtree(folder / "data")
        (folder / "data").symlink_to(outside, target_is_directory=True)
    else:
        (folder / "data" / "model.pt2").unlink()
        (folder / "data" / "model.pt2").symlink_to(outside / "model.pt2")
    with pytest.raises(UnsafeModelError, match="outside the model folder"):
        check_pt2_model(folder, "models:/x/1")
    assert check_pt2_model(honest["folder"], "models:/x/1") == honest["folder"] / "data" / "model.pt2"


class _Planted:
    """An object whose pickle runs a command that leaves a marker file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_pickle_record(folder: Path, marker: Path) -> str:
    """Rewrites the pt2 archive with its sample inputs (a record torch.export.load unpickles, falling back
    to weights_only=False) replaced by a pickle that runs a command; the record's name."""
    archive = folder / "data" / "model.pt2"
    buffer = io.BytesIO()
    torch.save(_Planted(marker), buffer)
    rewritten = folder / "data" / "rewritten.pt2"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_STORED) as dst:
        records = [info.filename for info in src.infolist()]
        planted = next(name for name in records if name.endswith("/sample_inputs/model.pt"))
        for info in src.infolist():
            dst.writestr(info, buffer.getvalue() if info.filename == planted else src.read(info))
    rewritten.replace(archive)
    return planted


def test_mlflows_pt2_pickle_check_accepts_an_honest_archive_and_refuses_a_planted_record(
        client, honest, ganray_home, tmp_path):
    from deploy.loader import load_named
    from trainers.model_ref import ModelRef
    from trainers.sampling import sample

    # an honest archive carries a pickle record too (its sample inputs), which the check accepts
    with zipfile.ZipFile(honest["folder"] / "data" / "model.pt2") as archive:
        assert any(n.endswith("/sample_inputs/model.pt") for n in archive.namelist())
    loaded = load_named(client, ModelRef(MODEL, version=honest["version"]))
    assert sample(loaded.generator, loaded.meta.z_dim, 2, seed=0).shape == (2, 16, 16, 3)

    marker = tmp_path / "MARKER"
    record = ""

    def edit(folder: Path) -> None:
        nonlocal record
        record = _plant_pickle_record(folder, marker)
        # the plant is live: where MLflow allows pickles, loading the archive runs its command
        allowed = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
        subprocess.run([sys.executable, "-c", "import sys, mlflow.pytorch; mlflow.pytorch.load_model(sys.argv[1])",
                        str(folder)], cwd=tmp_path, env=allowed, capture_output=True, timeout=300)
        assert marker.exists(), "the planted record did not run where pickles are allowed: the test plants nothing"
        marker.unlink()

    uri = _plant(client, honest, tmp_path, edit)
    _load_refused(client, uri, uri, record, "not a pickle-free payload")
    assert not marker.exists()
    env = {**cli_env(ganray_home), "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}  # ganray refuses anyway
    out = tmp_path / "x.png"
    proc = subprocess.run([str(Path(sys.executable).parent / "ganray"), "generate", uri, "--n", "2", "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    _cli_refused(proc, uri, record, "not a pickle-free payload")
    assert not marker.exists() and not out.exists()
