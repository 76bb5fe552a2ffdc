"""The projector in-process, on small networks shaped as the loader gives them (tests/projection_nets.py):
a model's own sample is found again (pixel MSE well below the nearest random sample's), W+ for a StyleGAN2
with exports and z otherwise, StyleGAN2's noise regularisation, D's features from a (planted) training
checkpoint, the bounds; the latent file (round trip, redraw, every refusal); pictures read, cropped, resized
or refused."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from projection_nets import loaded
from trainers.checkpoints.format import STATE_FILE, CheckpointError, GRID_FILE, rank_file, write_index
from trainers.latent_file import LatentFileError, check_fits, read_latent, redraw, write_latent
from trainers.networks import build_models
from trainers.projection import (ProjectionError, ProjectionSettings, noise_regularisation, normalise_noise, project,
                                 projection_space, space_note)
from trainers.projection_features import discriminator_features, discriminator_from_checkpoint, feature_distance
from trainers.sampling import sample
from trainers.spec import ModelSpec

VOCAB = ["blonde hair", "black hair"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tiny networks run ~20x faster so on a shared 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _own_sample(model, seed: int, c=None) -> np.ndarray:
    return sample(model.generator, model.meta.z_dim, 1, seed, c=c, takes_psi=model.meta.takes_psi)[0]


def _nearest_random_mse(model, target: np.ndarray, c=None, n: int = 200) -> float:
    images = sample(model.generator, model.meta.z_dim, n, 10_000, c=c, takes_psi=model.meta.takes_psi)
    t = target.astype(np.float64) / 127.5 - 1
    return float(((images.astype(np.float64) / 127.5 - 1 - t) ** 2).mean(axis=(1, 2, 3)).min())


@pytest.mark.parametrize("arch,exports,space", [("dcgan", True, "z"), ("cond-dcgan", True, "z"),
                                                ("stylegan2", True, "w+"), ("stylegan2", False, "z")])
def test_a_models_own_sample_is_found_again(arch, exports, space):
    model = loaded(arch, VOCAB if arch == "cond-dcgan" else [], exports=exports)
    c = torch.tensor([0.0, 1.0]) if model.meta.c_dim else None
    target = _own_sample(model, 999, c)
    fit = project(model, target, ProjectionSettings(steps=150), c=c)
    assert fit.space == space == projection_space(model)
    nearest = _nearest_random_mse(model, target, c)
    assert fit.pixel_mse < 0.5 * nearest, (fit.pixel_mse, nearest)
    assert fit.loss.shape == (150,) and np.isfinite(fit.loss).all() and fit.loss[-1] < fit.loss[0]
    assert fit.reconstruction.shape == (16, 16, 3) and fit.reconstruction.dtype == np.uint8
    exports = model.meta.exports
    want = (1, model.meta.z_dim) if space == "z" else (1, exports["num_ws"], exports["w_dim"])
    assert tuple(fit.latent.shape) == want
    assert len(fit.noise) == (len(model.noise) if space == "w+" else 0)


def test_the_space_and_its_note():
    assert space_note(loaded("dcgan")) is None and space_note(loaded("stylegan2")) is None
    note = space_note(loaded("stylegan2", exports=False))
    assert note.startswith("note: ") and "projected in z" in note and "\n" not in note


def test_noise_regularisation_is_finite_and_prefers_white_noise():
    torch.manual_seed(0)
    white = (torch.randn(16, 16), torch.randn(8, 8))
    smooth = tuple(torch.nn.functional.avg_pool2d(torch.randn(1, 1, 2 * n.shape[0], 2 * n.shape[1]), 2, 1)[0, 0,
                   :n.shape[0], :n.shape[1]] for n in white)
    normalise_noise(smooth)
    reg_white, reg_smooth = float(noise_regularisation(white)), float(noise_regularisation(smooth))
    assert np.isfinite(reg_white) and np.isfinite(reg_smooth) and 0 <= reg_white < reg_smooth
    for n in smooth:
        assert abs(float(n.mean())) < 1e-5 and abs(float(n.square().mean()) - 1) < 1e-4


def test_the_fitted_noise_maps_are_normalised_and_finite():
    model = loaded("stylegan2")
    fit = project(model, _own_sample(model, 3), ProjectionSettings(steps=20, frames=5))
    for n in fit.noise:
        assert torch.isfinite(n).all() and abs(float(n.mean())) < 1e-4 and abs(float(n.square().mean()) - 1) < 1e-3
    assert 5 <= len(fit.frames) <= 6 and all(f.shape == (16, 16, 3) for f in fit.frames)


@pytest.mark.parametrize("steps", [0, -1, 5001, True, 2.5, "10"])
def test_steps_out_of_bounds_are_refused(steps):
    with pytest.raises(ProjectionError, match="steps must be a whole number from 1 to 5000"):
        ProjectionSettings(steps=steps)


def test_other_bounds_are_refused():
    with pytest.raises(ProjectionError, match="frames must be from 0 to 300"):
        ProjectionSettings(steps=10, frames=301)
    with pytest.raises(ProjectionError, match="feature_weight"):
        ProjectionSettings(steps=10, feature_weight=float("nan"))
    model = loaded("dcgan")
    with pytest.raises(ProjectionError, match="the model draws 16x16 pictures"):
        project(model, np.zeros((32, 32, 3), np.uint8), ProjectionSettings(steps=1))
    with pytest.raises(ProjectionError, match="uint8 H x W x 3"):
        project(model, np.zeros((16, 16, 3), np.float32), ProjectionSettings(steps=1))
    with pytest.raises(ProjectionError, match="conditional"):
        project(loaded("cond-dcgan", VOCAB), np.zeros((16, 16, 3), np.uint8), ProjectionSettings(steps=1))


def _planted_checkpoint(folder, arch: str, vocabulary: list[str], generator_config: dict | None = None):
    """A checkpoint folder as training writes it (state with G, D and spec; index), its D returned too."""
    spec = ModelSpec(arch=arch, z_dim=16, channels=8, channels_max=32, mapping_layers=2,
                     conditioning="tags" if vocabulary else "none")
    g, d = build_models(spec, 16, c_dim=len(vocabulary))
    folder.mkdir()
    state = {"g": g.state_dict(), "d": d.state_dict(), "generator_config": generator_config or g.config,
             "spec": {"name": "planted", "data": {"url": "/nowhere"}, "model": spec.model_dump(mode="json")},
             "step": 1, "tags": vocabulary}
    torch.save(state, folder / STATE_FILE)
    torch.save({}, folder / rank_file(0))
    Image.new("RGB", (4, 4)).save(folder / GRID_FILE)
    write_index(folder, 0, 1, 1)
    return g, d


@pytest.mark.parametrize("arch", ["dcgan", "cond-dcgan", "stylegan2"])
def test_d_is_rebuilt_from_a_training_checkpoint_and_gives_features(tmp_path, arch):
    vocabulary = VOCAB if arch == "cond-dcgan" else []
    g, d = _planted_checkpoint(tmp_path / "checkpoint_000000001", arch, vocabulary)
    found = discriminator_from_checkpoint(tmp_path / "checkpoint_000000001", g.config)
    assert not found.training and not any(p.requires_grad for p in found.parameters())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    feats, want = discriminator_features(found)(x), discriminator_features(d)(x)
    assert len(feats) == len(d.input_blocks()) >= 2
    for a, b in zip(feats, want):
        assert torch.allclose(a, b)
    assert float(feature_distance(feats, want).detach().max()) < 1e-6
    other = feature_distance(feats, discriminator_features(found)(torch.rand(2, 3, 16, 16) * 2 - 1))
    assert (other > 1e-3).all()


def test_a_checkpoint_that_does_not_verify_or_fit_is_refused(tmp_path):
    g, _ = _planted_checkpoint(tmp_path / "checkpoint_000000001", "dcgan", [])
    with pytest.raises(CheckpointError, match="another generator"):
        discriminator_from_checkpoint(tmp_path / "checkpoint_000000001", {**g.config, "z_dim": 32})
    state = tmp_path / "checkpoint_000000001" / STATE_FILE
    state.write_bytes(state.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        discriminator_from_checkpoint(tmp_path / "checkpoint_000000001", g.config)


def test_projection_with_d_features_reports_the_feature_distance(tmp_path):
    model = loaded("stylegan2")
    _, d = _planted_checkpoint(tmp_path / "checkpoint_000000001", "stylegan2", [])
    target = _own_sample(model, 5)
    fit = project(model, target, ProjectionSettings(steps=60), features=discriminator_features(d))
    assert fit.feature is not None and np.isfinite(fit.feature) and fit.feature >= 0
    assert fit.pixel_mse < 0.5 * _nearest_random_mse(model, target)


@pytest.mark.parametrize("arch", ["cond-dcgan", "stylegan2"])
def test_a_latent_file_round_trips_and_redraws(tmp_path, arch):
    model = loaded(arch, VOCAB)
    c = torch.tensor([1.0, 0.0])
    fit = project(model, _own_sample(model, 11, c), ProjectionSettings(steps=30), c=c)
    path = write_latent(tmp_path / "latent.npz", fit, model.uri, c)
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["space"]) == fit.space and npz["model"] == model.uri
        assert set(npz.files) == {"space", "latent", "model", "condition", "reconstruction", "loss",
                                  *(f"noise_{i}" for i in range(len(fit.noise)))}
    found = read_latent(path)
    check_fits(found, model, str(path))
    assert np.array_equal(redraw(model, found, None), fit.reconstruction)
    assert np.array_equal(redraw(model, found, c), fit.reconstruction)
    other = redraw(model, found, torch.tensor([0.0, 1.0]))
    assert other.shape == fit.reconstruction.shape and not np.array_equal(other, fit.reconstruction)


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        arrays.pop(k)
    np.savez(path, **arrays)


def test_a_latent_that_does_not_fit_the_model_is_refused(tmp_path):
    model = loaded("stylegan2")
    fit = project(model, _own_sample(model, 1), ProjectionSettings(steps=2))
    path = write_latent(tmp_path / "latent.npz", fit, model.uri, None)
    _rewrite(path, latent=np.zeros((1, 3, 16), np.float32))
    with pytest.raises(LatentFileError, match=r"holds a w\+ latent \(1, 3, 16\).*takes w\+ \(1, 6, 16\)"):
        check_fits(read_latent(path), model, str(path))
    write_latent(path, fit, "models:/another/4", None)
    with pytest.raises(LatentFileError, match="fitted to models:/another/4, not models:/tiny/1"):
        check_fits(read_latent(path), model, str(path))
    write_latent(path, fit, model.uri, None)
    with pytest.raises(LatentFileError, match=r"takes z \(1, 16\)"):
        check_fits(read_latent(path), loaded("stylegan2", exports=False), str(path))
    _rewrite(path, noise_0=None)
    with pytest.raises(LatentFileError, match="noise maps noise_1, noise_2, .* are not noise_0 .. noise_K"):
        read_latent(path)


@pytest.mark.parametrize("change,words", [
    ({"latent": np.array([[np.nan] * 16], np.float32)}, "latent must hold finite floats"),
    ({"latent": np.array([object()], dtype=object)}, "without pickles"),
    ({"space": np.array("q")}, "space must be 'z' or 'w+'"),
    ({"model": np.array(3)}, "model must be one short string"),
    ({"extra": np.zeros(2)}, "unknown extra"),
    ({"loss": None}, "missing loss"),
    ({"reconstruction": np.zeros((4, 5, 3), np.uint8)}, "reconstruction must be uint8 R x R x 3"),
])
def test_a_malformed_latent_file_is_refused(tmp_path, change, words):
    model = loaded("dcgan")
    fit = project(model, _own_sample(model, 1), ProjectionSettings(steps=1))
    path = write_latent(tmp_path / "latent.npz", fit, model.uri, None)
    if "latent" in change and change["latent"].dtype == object:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        np.savez(path, **{**arrays, **change}, allow_pickle=True)
    else:
        _rewrite(path, **change)
    with pytest.raises(LatentFileError, match=re.escape(words)):
        read_latent(path)


def test_not_a_latent_file_is_refused(tmp_path):
    (tmp_path / "x.npz").write_text(json.dumps({"latent": [1, 2]}))
    with pytest.raises(LatentFileError, match="not a readable .npz"):
        read_latent(tmp_path / "x.npz")
    with pytest.raises(LatentFileError, match="no such file"):
        read_latent(tmp_path / "none.npz")


def test_pictures_are_cropped_resized_or_refused(tmp_path):
    from orchestrator.explore.project import PictureError, read_picture

    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = (200, 30, 40)  # the centre square
    Image.fromarray(wide).save(tmp_path / "wide.png")
    square = read_picture(tmp_path / "wide.png")
    assert square.shape == (20, 20, 3) and (square == (200, 30, 40)).all()
    small = read_picture(tmp_path / "wide.png", 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.uint8 and (small == (200, 30, 40)).all()
    Image.fromarray(wide[:, :, 0]).convert("L").save(tmp_path / "grey.png")
    assert read_picture(tmp_path / "grey.png", 8).shape == (8, 8, 3)
    Image.new("RGBA", (16, 16), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    assert (read_picture(tmp_path / "alpha.png", 16) == (1, 2, 3)).all()
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(PictureError, match="is not a picture Pillow can read"):
        read_picture(tmp_path / "notes.txt", 16)
    (tmp_path / "cut.png").write_bytes((tmp_path / "wide.png").read_bytes()[:60])
    with pytest.raises(PictureError, match="cannot be read"):
        read_picture(tmp_path / "cut.png", 16)
    with pytest.raises(PictureError, match="no such file"):
        read_picture(tmp_path / "none.png", 16)
    Image.new("1", (6400, 6400)).save(tmp_path / "huge.png")
    with pytest.raises(PictureError, match="6400x6400, over 40000000 pixels"):
        read_picture(tmp_path / "huge.png", 16)


def test_the_exported_parts_are_projected_through(tmp_path):
    """The parts as a version carries them (torch.export programs, saved and loaded): differentiable in ws and
    the noise maps, so a W+ projection runs through them as through the modules."""
    from trainers.exports import export_parts

    model = loaded("stylegan2")
    g = model.generator.g
    files, _ = export_parts(g, model.meta.input_width, tmp_path)
    parts = {f.stem: f for f in files}
    exported = type(model)(model.name, model.version, model.generator, model.meta,
                           torch.export.load(str(parts["mapping"])).module(),
                           torch.export.load(str(parts["synthesis"])).module(), model.noise)
    target = _own_sample(model, 999)
    fit = project(exported, target, ProjectionSettings(steps=100))
    assert fit.space == "w+" and fit.pixel_mse < 0.5 * _nearest_random_mse(model, target)
