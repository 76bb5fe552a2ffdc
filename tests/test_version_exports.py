"""What a registered version exposes: a StyleGAN2's mapping, synthesis and noise maps beside its generator.

Versions are registered on the session's real MLflow server the registry's way (``register_untrained``
calls ``register_generator``) and loaded through the one loader (``deploy.loader.load_named``). A StyleGAN2
loads with its parts, and ``synthesis(mapping(zc), *noise)`` draws the generator's images; a DCGAN and a
StyleGAN2 registered before the parts existed load without them. Tampered versions (the parts' metadata or
files changed by someone who can register) are refused with a LoadError naming the problem, before any
archive is deserialised.
"""
from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stack_mlflow import mlflow_client, register_untrained

MODEL = "exports"
VOCAB = ["blonde hair", "hat", "smile"]


@pytest.fixture(scope="module")
def client(stack, ganray_home):
    return mlflow_client(ganray_home)


@pytest.fixture(scope="module")
def style_version(client) -> int:
    return register_untrained(client, MODEL, "stylegan2", [], seed=4)


@pytest.fixture(scope="module")
def honest_folder(client, style_version, tmp_path_factory) -> Path:
    """The downloaded folder of the honest StyleGAN2 version."""
    import mlflow

    stored = client.get_model_version_download_uri(MODEL, str(style_version))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=str(tmp_path_factory.mktemp("h")),
                                                    tracking_uri=client.tracking_uri))


def _load(client, name: str, version: int):
    from deploy.loader import load_named
    from trainers.model_ref import ModelRef

    return load_named(client, ModelRef(name, version=version))


def _rows(model, n: int, seed: int, truncation: float = 1.0, tags: list[str] | None = None) -> torch.Tensor:
    from trainers.sampling import condition_vector, packed_rows

    c = condition_vector(model.meta, tags)
    return packed_rows(model.meta.z_dim, n, seed, c, truncation, model.meta.takes_psi)


@pytest.mark.parametrize("vocabulary", [[], VOCAB], ids=["unconditional", "tags"])
def test_a_stylegan2_version_loads_its_parts_and_they_draw_its_images(client, style_version, vocabulary):
    version = style_version if not vocabulary else register_untrained(client, MODEL + "-tags", "stylegan2",
                                                                      vocabulary, seed=5)
    model = _load(client, MODEL if not vocabulary else MODEL + "-tags", version)
    exports = model.meta.exports
    assert model.mapping is not None and model.synthesis is not None
    assert exports["num_ws"] == 6 and exports["w_dim"] == 16  # 16x16: 4, 8, 8, 16, 16 and one ToRGB
    assert exports["noise_shapes"] == [[4, 4], [8, 8], [8, 8], [16, 16], [16, 16]]
    assert [tuple(n.shape) for n in model.noise] == [(4, 4), (8, 8), (8, 8), (16, 16), (16, 16)]
    assert all(p.startswith("extra_files/") for p in (exports["mapping"], exports["synthesis"], exports["noise"]))
    for truncation, n in ((1.0, 5), (0.6, 3), (1.0, 1)):
        rows = _rows(model, n, seed=11, truncation=truncation, tags=["hat"] if vocabulary else None)
        with torch.no_grad():
            ws = model.mapping(rows)
            parts = model.synthesis(ws, *model.noise)
            whole = model.generator(torch.cat([rows, rows]))[:n]  # the generator's batch is >= 2
        assert ws.shape == (n, 6, 16)
        assert torch.allclose(parts, whole, atol=1e-5), (parts - whole).abs().max()


def test_the_synthesis_part_is_differentiable_in_ws_and_noise(client, style_version):
    model = _load(client, MODEL, style_version)
    ws = model.mapping(_rows(model, 2, seed=3)).detach().requires_grad_(True)
    noise = [n.clone().requires_grad_(True) for n in model.noise]
    model.synthesis(ws, *noise).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    assert all(n.grad is not None for n in noise)  # zero here: an untrained G's noise strengths are 0


def test_a_dcgan_and_an_older_stylegan2_load_without_parts(client):
    dcgan = _load(client, MODEL + "-dcgan", register_untrained(client, MODEL + "-dcgan", "dcgan", [], seed=1))
    older = _load(client, MODEL + "-older", register_untrained(client, MODEL + "-older", "stylegan2", [], seed=2,
                                                               psi_export=True))  # logged without the parts
    for model in (dcgan, older):
        assert model.mapping is None and model.synthesis is None and model.noise == ()
        assert model.meta.exports == {}
        assert model.generator(_rows(model, 2, seed=0)).shape == (2, 3, 16, 16)


def _plant(client, honest_folder: Path, tmp_path: Path, edit) -> int:
    """A copy of the honest StyleGAN2 folder, changed by edit(folder), registered as a new version of
    MODEL + '-planted' through MLflow's client (as someone who can register would); the version."""
    folder = tmp_path / "planted"
    shutil.copytree(honest_folder, folder)
    edit(folder)
    exp = client.get_experiment_by_name("exports-planted")
    run = client.create_run(exp.experiment_id if exp else client.create_experiment("exports-planted"))
    client.log_artifacts(run.info.run_id, str(folder), "generator")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(MODEL + "-planted")
    except Exception:  # noqa: BLE001 - registered by an earlier test
        pass
    return int(client.create_model_version(MODEL + "-planted", f"{run.info.artifact_uri}/generator",
                                           run.info.run_id).version)


def _exports_edit(change):
    def edit(folder: Path) -> None:
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
        change(mlmodel["metadata"]["ganray"]["exports"])
        (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return edit


def _replace_noise(arrays: dict):
    def edit(folder: Path) -> None:
        np.savez(folder / "extra_files" / "noise.npz", **arrays)
    return edit


def _pickle_in_synthesis(marker: Path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    def edit(folder: Path) -> None:
        with zipfile.ZipFile(folder / "extra_files" / "synthesis.pt2", "a") as archive:
            archive.writestr("synthesis/data/constants/evil.pkl", pickle.dumps(Payload()))
    return edit


SHAPES = [[4, 4], [8, 8], [8, 8], [16, 16], [16, 16]]
TAMPERED = {
    "path-with-dotdot": (_exports_edit(lambda e: e.update(synthesis="../../elsewhere/synthesis.pt2")),
                         "not a relative path inside the model folder"),
    "absolute-path": (_exports_edit(lambda e: e.update(mapping="/etc/mapping.pt2")),
                      "not a relative path inside the model folder"),
    "wrong-suffix": (_exports_edit(lambda e: e.update(noise="extra_files/noise.pkl")), "ending in .npz"),
    "missing-file": (_exports_edit(lambda e: e.update(mapping="extra_files/gone.pt2")), "is not in the model folder"),
    "noise-shapes-not-its-architecture": (_exports_edit(lambda e: e.update(noise_shapes=[[4, 4]] * 5)),
                                          "noise_shapes"),
    "num-ws-not-its-architecture": (_exports_edit(lambda e: e.update(num_ws=10**9)), "num_ws"),
    "exports-not-a-mapping": (_exports_edit(lambda e: (e.clear(), e.update(x=1))), "exported mapping"),
    "noise-maps-of-other-shapes": (_replace_noise({f"noise_{i}": np.zeros((3, 3), np.float32) for i in range(5)}),
                                   "not the float32 maps its metadata states"),
    "noise-maps-of-another-type": (_replace_noise({f"noise_{i}": np.zeros(s, np.float64)
                                                   for i, s in enumerate(SHAPES)}),
                                   "not the float32 maps its metadata states"),
    "noise-map-missing": (_replace_noise({"noise_0": np.zeros((4, 4), np.float32)}), "cannot be read as maps"),
    "noise-with-a-pickle": (_replace_noise({**{f"noise_{i}": np.zeros(s, np.float32) for i, s in enumerate(SHAPES)},
                                            "noise_4": np.array([{"a": 1}], dtype=object)}),
                            "Object arrays cannot be loaded"),
}


@pytest.mark.parametrize("plant", list(TAMPERED))
def test_a_version_with_tampered_parts_is_refused_with_a_clear_error(client, honest_folder, tmp_path, plant):
    from deploy.loader import LoadError

    edit, words = TAMPERED[plant]
    version = _plant(client, honest_folder, tmp_path, edit)
    with pytest.raises(LoadError) as caught:
        _load(client, MODEL + "-planted", version)
    message = str(caught.value)
    assert f"models:/{MODEL}-planted/{version}" in message and words in message, message


def test_a_pickle_record_in_a_part_is_refused_before_it_runs(client, honest_folder, tmp_path):
    from deploy.loader import LoadError

    marker = tmp_path / "MARKER"
    version = _plant(client, honest_folder, tmp_path, _pickle_in_synthesis(marker))
    with pytest.raises(LoadError, match="exported synthesis .* cannot be loaded safely"):
        _load(client, MODEL + "-planted", version)
    assert not marker.exists()


def test_parts_listed_for_a_dcgan_are_refused(client, tmp_path):
    import mlflow

    from deploy.loader import LoadError

    version = register_untrained(client, MODEL + "-dcgan2", "dcgan", [], seed=8)
    stored = client.get_model_version_download_uri(MODEL + "-dcgan2", str(version))
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=stored, dst_path=str(tmp_path / "d"),
                                                      tracking_uri=client.tracking_uri))

    def edit(planted: Path) -> None:
        mlmodel = yaml.safe_load((planted / "MLmodel").read_text())
        mlmodel["metadata"]["ganray"]["exports"] = {"mapping": "extra_files/m.pt2", "synthesis": "extra_files/s.pt2",
                                                    "noise": "extra_files/n.npz", "num_ws": 6, "w_dim": 16,
                                                    "noise_shapes": SHAPES}
        (planted / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    planted = _plant(client, folder, tmp_path, edit)
    with pytest.raises(LoadError, match="is dcgan but its metadata lists exported StyleGAN2 parts"):
        _load(client, MODEL + "-planted", planted)
