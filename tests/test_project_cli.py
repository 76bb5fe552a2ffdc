"""`ganray project` and `ganray generate --latent` through the CLI, against the session stack's real MLflow:
one of a model's own samples projected (a valid latent file, its reconstruction, the fit as a GIF), redrawn
as it was and under another tag, and every refusal with one clear line (a picture that is not one, steps
out of bounds, a latent of the wrong shape or of another model, options a redraw has no use for)."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from conftest import cli_refused, ganray, ganray_here
from stack_mlflow import mlflow_client, register_untrained
from trainers.projection import MAX_STEPS, MIN_STEPS

VOCAB = ["blonde hair", "black hair"]


@pytest.fixture(scope="module")
def models(stack, ganray_home):
    client = mlflow_client(ganray_home)
    old = register_untrained(client, "proj-old-style", "stylegan2", [], seed=6, psi_export=True)  # no W exports
    return {"cond": f"proj-cond/{register_untrained(client, 'proj-cond', 'cond-dcgan', VOCAB, seed=4)}",
            "style": f"proj-style/{register_untrained(client, 'proj-style', 'stylegan2', [], seed=5)}",
            "old-style": f"proj-old-style/{old}"}


def _own_sample(home, model: str, folder, *tags: str) -> str:
    ganray_here(home, "generate", model, "--n", "1", "--seed", "21", *tags, "--out", str(folder / "s.npz"))
    with np.load(folder / "s.npz", allow_pickle=False) as npz:
        Image.fromarray(npz["images"][0]).resize((40, 40), Image.Resampling.NEAREST).save(folder / "sample.png")
    return str(folder / "sample.png")


def test_a_projected_sample_is_written_and_redrawn(ganray_home, models, tmp_path):
    model = models["cond"]
    picture = _own_sample(ganray_home, model, tmp_path, "--tags", "blonde hair", "--exact-tags")
    proc = ganray(ganray_home, "project", picture, model, "--tags", "blonde hair", "--steps", "40",
                  "--out", str(tmp_path / "face.npz"), "--video", str(tmp_path / "fit.gif"))
    assert "projected in z (40 steps" in proc.stdout and "pixel MSE" in proc.stdout, proc.stdout
    assert "note: its training checkpoint is not usable" in proc.stderr and "step 40/40" in proc.stderr
    with np.load(tmp_path / "face.npz", allow_pickle=False) as npz:
        assert str(npz["space"]) == "z" and str(npz["model"]) == "models:/proj-cond/1"
        assert npz["latent"].shape == (1, 16) and npz["loss"].shape == (40,)
        assert npz["condition"].tolist() == [1.0, 0.0]
        reconstruction = npz["reconstruction"]
    assert reconstruction.shape == (16, 16, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "face.png")), reconstruction)
    with Image.open(tmp_path / "fit.gif") as gif:
        assert gif.n_frames >= 10 and gif.size == (2 * 256, 256)
    again = ganray_here(ganray_home, "generate", model, "--latent", str(tmp_path / "face.npz"), "--out",
                   str(tmp_path / "again.png"))
    assert "redrawn by models:/proj-cond/1" in again.stdout
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), reconstruction)
    ganray_here(ganray_home, "generate", model, "--latent", str(tmp_path / "face.npz"), "--tags", "black hair",
           "--out", str(tmp_path / "black.png"))
    black = np.asarray(Image.open(tmp_path / "black.png"))
    assert black.shape == (16, 16, 3) and not np.array_equal(black, reconstruction)


@pytest.mark.parametrize("which,space", [("style", "w+"), ("old-style", "z")])
def test_a_stylegan2_version_is_projected_in_w_plus_or_without_exports_in_z(ganray_home, models, tmp_path, which,
                                                                           space):
    model = models[which]
    picture = _own_sample(ganray_home, model, tmp_path)
    proc = ganray_here(ganray_home, "project", picture, model, "--steps", "30", "--out", str(tmp_path / "s.npz"))
    assert f"projected in {space} (30 steps" in proc.stdout, proc.stdout
    note = "registered without its mapping and synthesis exports, so it is projected in z"
    assert (note in proc.stderr) == (space == "z"), proc.stderr
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:
        assert str(npz["space"]) == space
        assert npz["latent"].shape == ((1, 6, 16) if space == "w+" else (1, 16))
        assert sorted(k for k in npz.files if k.startswith("noise_")) == (
            [f"noise_{i}" for i in range(5)] if space == "w+" else [])
    ganray_here(ganray_home, "generate", model, "--latent", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r.npz"))
    with np.load(tmp_path / "r.npz", allow_pickle=False) as npz, np.load(tmp_path / "s.npz") as fitted:
        assert np.array_equal(npz["images"][0], fitted["reconstruction"])


def test_a_latent_of_the_wrong_shape_or_model_iscli_refused(ganray_home, models, tmp_path):
    picture = _own_sample(ganray_home, models["cond"], tmp_path, "--tags", "black hair")
    ganray_here(ganray_home, "project", picture, models["cond"], "--tags", "black hair", "--steps", "2", "--out",
           str(tmp_path / "c.npz"))
    with np.load(tmp_path / "c.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(tmp_path / "wide.npz", **{**arrays, "latent": np.zeros((1, 17), np.float32)})
    proc = ganray_here(ganray_home, "generate", models["cond"], "--latent", str(tmp_path / "wide.npz"), "--out",
                  str(tmp_path / "x.png"), check=False)
    cli_refused(proc, 2, "wide.npz holds a z latent (1, 17)", "models:/proj-cond/1 takes z (1, 16)")
    proc = ganray_here(ganray_home, "generate", models["style"], "--latent", str(tmp_path / "c.npz"), "--out",
                  str(tmp_path / "x.png"), check=False)
    cli_refused(proc, 2, "was fitted to models:/proj-cond/1, not models:/proj-style/1")
    proc = ganray_here(ganray_home, "generate", models["cond"], "--latent", str(tmp_path / "c.npz"), "--n", "4",
                  "--seed", "3", "--out", str(tmp_path / "x.png"), check=False)
    cli_refused(proc, 2, "--n, --seed do not apply")
    assert not (tmp_path / "x.png").exists()


def test_what_project_cannot_use_iscli_refused(ganray_home, models, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    proc = ganray_here(ganray_home, "project", str(tmp_path / "notes.png"), models["cond"], "--tags", "black hair",
                  "--out", str(tmp_path / "x.npz"), check=False)
    cli_refused(proc, 2, "notes.png is not a picture Pillow can read")
    Image.new("RGB", (20, 20)).save(tmp_path / "ok.png")
    for steps in (str(MIN_STEPS - 1), str(MAX_STEPS + 1)):
        proc = ganray_here(ganray_home, "project", str(tmp_path / "ok.png"), models["cond"], "--tags", "black hair",
                      "--steps", steps, "--out", str(tmp_path / "x.npz"), check=False)
        cli_refused(proc, 2, f"steps must be a whole number from {MIN_STEPS} to {MAX_STEPS}, got {steps}")
    proc = ganray_here(ganray_home, "project", str(tmp_path / "ok.png"), models["cond"], "--out",
                  str(tmp_path / "x.npz"), check=False)
    cli_refused(proc, 1, "is tag-conditioned: give tags")
    proc = ganray_here(ganray_home, "project", str(tmp_path / "ok.png"), models["cond"], "--tags", "black hair",
                  "--out", str(tmp_path / "x.png"), check=False)
    cli_refused(proc, 2, "--out must end in .npz")
    assert not (tmp_path / "x.npz").exists()
    assert f"({MIN_STEPS} to {MAX_STEPS})" in ganray_here(ganray_home, "project", "--help").stdout
