"""``ganray generate MODEL --walk SEEDS``, through the CLI against the session's stack (the first test as a
process of its own, the rest through click's runner in this process: the same command, minus ~6 s of imports).

Untrained generators registered the registry's way (a StyleGAN2 with its exported parts walks in W, an
older StyleGAN2 version in z with one note, a conditional DCGAN in z with its tags moving); the walk
files are read back with Pillow (GIF, WebP) or checked as MP4s, and every bound is an error naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import ganray, ganray_here
from stack_mlflow import mlflow_client, register_untrained

VOCAB = ["black hair", "blonde hair", "hat"]


@pytest.fixture(scope="module")
def versions(stack, ganray_home) -> dict[str, str]:
    client = mlflow_client(ganray_home)
    return {"style": f"walk-style/{register_untrained(client, 'walk-style', 'stylegan2', [], seed=21)}",
            "older": f"walk-older/{register_untrained(client, 'walk-older', 'stylegan2', [], seed=22, psi_export=True)}",
            "cond": f"walk-cond/{register_untrained(client, 'walk-cond', 'cond-dcgan', VOCAB, seed=23)}",
            "big": f"walk-big/{register_untrained(client, 'walk-big', 'dcgan', [], seed=24, resolution=64)}"}


def _frames(path: Path) -> np.ndarray:
    """Every frame of an animated GIF or WebP, as RGB arrays."""
    return _frames_and_time(path)[0]


def _frames_and_time(path: Path) -> tuple[np.ndarray, int]:
    """(every frame of an animated GIF or WebP as RGB arrays, the animation's length in ms). GIF's and WebP's
    encoders keep identical consecutive frames as one, shown for their time together."""
    with Image.open(path) as image:
        out, ms = [], 0
        for i in range(image.n_frames):
            image.seek(i)
            out.append(np.asarray(image.convert("RGB"), dtype=np.float64))
            ms += image.info["duration"]
    return np.stack(out), ms


def _change(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames, axis=0)).mean())


def test_a_walk_gif_has_its_frames_and_moves_less_between_frames_than_between_keys(ganray_home, versions, tmp_path):
    out = tmp_path / "walk.gif"
    proc = ganray(ganray_home, "generate", versions["style"], "--walk", "1,5,9", "--frames", "12", "--out", str(out))
    assert f"wrote a walk of 12 frames in w through seeds 1,5,9 of models:/{versions['style']} to {out}" in proc.stdout
    assert "frames 12/12" in proc.stderr and "note:" not in proc.stderr
    frames = _frames(out)
    assert frames.shape == (12, 16, 16, 3)
    keys = frames[[0, 4, 8, 0]]  # 12 frames over 3 segments: the keys are frames 0, 4 and 8, then back to 0
    consecutive = _change(np.concatenate([frames, frames[:1]]))
    assert 0 < consecutive < _change(keys) / 2, (consecutive, _change(keys))


def test_a_webp_grid_of_walks_and_an_mp4(ganray_home, versions, tmp_path):
    out = tmp_path / "grid.webp"
    proc = ganray_here(ganray_home, "generate", versions["style"], "--walk", "0,3", "--frames", "6", "--grid", "2x3",
                  "--truncation", "0.7", "--out", str(out))
    assert "wrote 2x3 walks of 6 frames in w" in proc.stdout and "frames 36/36" in proc.stderr
    frames = _frames(out)
    assert frames.shape == (6, 2 * 18 + 2, 3 * 18 + 2, 3)
    cells = [frames[0, 2 + r * 18: 18 + r * 18, 2 + c * 18: 18 + c * 18] for r in range(2) for c in range(3)]
    assert min(np.abs(a - b).mean() for i, a in enumerate(cells) for b in cells[i + 1:]) > 0  # six other walks
    video = tmp_path / "walk.mp4"
    ganray_here(ganray_home, "generate", versions["style"], "--walk", "1,2", "--frames", "8", "--out", str(video))
    head = video.read_bytes()[:12]
    assert head[4:8] == b"ftyp" and video.stat().st_size > 500


def test_a_walk_from_one_tag_to_another_draws_the_same_face_with_the_second_tag(ganray_home, versions, tmp_path):
    out = tmp_path / "hair.webp"
    ganray_here(ganray_home, "generate", versions["cond"], "--walk", "3", "--frames", "8", "--tags", "blonde hair",
           "--tags-to", "black hair", "--out", str(out))
    frames, ms = _frames_and_time(out)  # lossless WebP: the frames as drawn
    assert ms == 8 * round(1000 / 24) and _change(frames) > 0  # 8 frames at 24 fps (identical ones kept as one)
    for tag, frame in (("blonde hair", frames[0]), ("black hair", frames[-1])):
        npz = tmp_path / f"{tag}.npz"
        ganray_here(ganray_home, "generate", versions["cond"], "--n", "1", "--seed", "3", "--tags", tag, "--exact-tags",
               "--out", str(npz))
        with np.load(npz, allow_pickle=False) as arrays:
            assert np.abs(arrays["images"][0].astype(np.float64) - frame).max() <= 1, tag


def test_an_older_stylegan2_version_walks_in_z_with_one_note(ganray_home, versions, tmp_path):
    proc = ganray_here(ganray_home, "generate", versions["older"], "--walk", "1,2,3", "--frames", "9", "--out",
                  str(tmp_path / "z.gif"))
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "walking in z" in notes[0], proc.stderr
    assert "in z through seeds" in proc.stdout and _frames(tmp_path / "z.gif").shape[0] == 9


@pytest.mark.parametrize("args, words", [
    (["--walk", "1,2", "--frames", "1"], "2 to 600 frames"),
    (["--walk", "1,2", "--frames", "601"], "2 to 600 frames"),
    (["--walk", "1"], "one seed walks only while the tags or prompt move"),
    (["--walk", "1,x"], "comma-separated seeds"),
    (["--walk", ",".join(map(str, range(65)))], "at most 64 seeds"),
    (["--walk", "1,2", "--grid", "9x9"], "81 walks; at most 64"),
    (["--walk", "1,2", "--grid", "3by3"], "ROWSxCOLUMNS"),
    (["--walk", "1,2", "--out", "walk.png"], "has another suffix"),
    (["--walk", "1,2", "--fps", "0"], "--fps must be from 1 to 60"),
    (["--walk", "1,2", "--tags-to", "hat"], "--tags-to needs --tags"),
    (["--walk", "1,2", "--n", "4"], "a walk takes its seeds from --walk"),
    (["--frames", "10"], "--frames go with --walk"),
])
def test_a_walk_past_its_bounds_is_a_usage_error(ganray_home, versions, tmp_path, args, words):
    out = ["--out", str(tmp_path / "w.gif")] if "--out" not in args else ["--out", str(tmp_path / args[-1])]
    args = args[:-2] if "--out" in args else args
    proc = ganray_here(ganray_home, "generate", versions["style"], *args, *out, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and words in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


def test_a_walk_over_the_pixel_budget_is_refused_before_it_is_drawn(ganray_home, versions, tmp_path):
    proc = ganray_here(ganray_home, "generate", versions["big"], "--walk", "1,2", "--frames", "600", "--grid", "8x8",
                  "--out", str(tmp_path / "big.gif"), check=False)
    assert proc.returncode == 2 and "over the walk's budget of 150,000,000 pixels" in proc.stderr, proc.stderr[-2000:]
    assert "frames 1/" not in proc.stderr and not (tmp_path / "big.gif").exists()


def test_an_mp4_without_imageio_ffmpeg_says_which_extra_to_install(monkeypatch, tmp_path):
    from orchestrator.cli import main

    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)  # as if not installed
    result = CliRunner().invoke(main, ["generate", "any/1", "--walk", "1,2", "--out", str(tmp_path / "w.mp4")])
    assert result.exit_code == 2, result.output
    assert "pip install 'ganray[video]'" in result.output and not (tmp_path / "w.mp4").exists()
