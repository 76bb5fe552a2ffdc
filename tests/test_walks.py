"""The walk core (trainers/walks.py), in process: networks built directly, wrapped as the loader wraps a version.

A DCGAN walks in z; a StyleGAN2 with its exported parts (``trainers.exports``, exported and loaded back
here as the loader loads them) walks in W, and without them in z. The walk has the asked frames, starts on
the first key seed's sample, closes its loop, moves less from frame to frame than from key to key, and
keeps the norm of z while it slerps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from trainers.exports import export_parts
from trainers.generator_metadata import GeneratorMetadata
from trainers.networks import PackedInputGenerator, build_models
from trainers.sampling import SamplingError, condition_vector, sample
from trainers.spec import ModelSpec
from trainers.walks import MAX_FRAMES, check_walk, frame_positions, slerp, walk_frames, walk_space

VOCAB = ["blonde hair", "black hair", "hat"]


@dataclass(frozen=True)
class Version:
    """What walk_frames reads of a LoadedModel."""

    generator: Any
    meta: GeneratorMetadata
    mapping: Any = None
    synthesis: Any = None
    noise: tuple = ()
    device: str = "cpu"


def _version(arch: str, vocabulary: list[str] = (), parts: bool = False, tmp_path=None, seed: int = 0,
             text: bool = False) -> Version:
    torch.manual_seed(seed)
    conditioning = "text" if text else ("tags" if vocabulary else "none")
    spec = ModelSpec(arch=arch, z_dim=16, channels=8, channels_max=32, mapping_layers=2, conditioning=conditioning,
                     **({"embed_dim": 8} if text else {}))
    g, _ = build_models(spec, 16, c_dim=12 if text else len(vocabulary))
    g.eval()
    if arch == "stylegan2":
        cond = torch.rand(64, g.c_dim) if g.c_dim else None
        g.mapping(torch.randn(64, 16), g.ca(cond)[0] if text else cond, update_w_avg=True)
    meta = GeneratorMetadata(g.config, [] if text else list(vocabulary), conditioning, step=0)
    packed = PackedInputGenerator(g).eval()
    if not parts:
        return Version(packed, meta)
    _, exports = export_parts(g, meta.input_width, tmp_path)
    loaded = {p: torch.export.load(str(tmp_path / f"{p}.pt2")).module() for p in ("mapping", "synthesis")}
    with np.load(tmp_path / "noise.npz", allow_pickle=False) as npz:
        noise = tuple(torch.from_numpy(npz[f"noise_{i}"]) for i in range(len(exports["noise_shapes"])))
    return Version(packed, GeneratorMetadata(g.config, list(meta.vocabulary), conditioning, step=0, exports=exports),
                   loaded["mapping"], loaded["synthesis"], noise)


def _mean_change(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames.astype(np.float64), axis=0)).mean())


def test_slerp_keeps_the_norm_and_ends_on_its_ends():
    a, b = torch.randn(5, 64), torch.randn(5, 64)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)  # one norm per row
    for t in (0.0, 0.25, 0.5, 0.9, 1.0):
        mid = slerp(a, b, t)
        assert torch.allclose(mid.norm(dim=1), a.norm(dim=1), rtol=1e-5)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    lerp_mid = (a + b) / 2
    assert (lerp_mid.norm(dim=1) < a.norm(dim=1) - 1e-3).all()  # what a straight line would lose
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-5)  # parallel rows: no NaN
    t = torch.tensor([[0.0], [0.5], [1.0], [0.2], [0.7]])
    assert torch.allclose(slerp(a, b, t)[2], b[2], atol=1e-5)


def test_frames_are_spread_evenly_and_the_loop_closes():
    segment, t = frame_positions(3, 12)
    assert list(segment) == [0] * 4 + [1] * 4 + [2] * 4
    assert np.allclose(t[:4], [0, 0.25, 0.5, 0.75])
    segment, t = frame_positions(2, 5)
    assert np.allclose(segment + t, np.arange(5) * 2 / 5)


@pytest.mark.parametrize("arch", ["dcgan", "stylegan2"])
def test_a_walk_has_its_frames_starts_on_the_first_key_and_moves_smoothly(arch, tmp_path):
    model = _version(arch, parts=arch == "stylegan2", tmp_path=tmp_path)
    assert walk_space(model) == ("w" if arch == "stylegan2" else "z")
    seen = []
    frames = walk_frames(model, [3, 8, 21], 24, batch=7, progress=lambda done, total: seen.append((done, total)))
    assert frames.shape == (24, 16, 16, 3) and frames.dtype == np.uint8
    assert seen == [(7, 24), (14, 24), (21, 24), (24, 24)]
    keys = np.concatenate([sample(model.generator, 16, 1, s, takes_psi=model.meta.takes_psi) for s in (3, 8, 21)])
    assert np.abs(frames[0].astype(int) - keys[0]).max() <= 1  # the parts' float path may round one step apart
    assert np.abs(frames[8].astype(int) - keys[1]).max() <= 1 and np.abs(frames[16].astype(int) - keys[2]).max() <= 1
    closing = np.abs(frames[-1].astype(float) - keys[0]).mean()  # the last frame leads back to the first
    assert closing < np.abs(frames[-1].astype(float) - keys[1]).mean()
    key_change = _mean_change(np.concatenate([keys, keys[:1]]))
    assert 0 < _mean_change(np.concatenate([frames, frames[:1]])) < key_change / 2


def test_a_stylegan2_walk_is_in_w_with_its_parts_and_in_z_without(tmp_path):
    with_parts = _version("stylegan2", parts=True, tmp_path=tmp_path, seed=1)
    without = _version("stylegan2", seed=1)
    assert walk_space(without) == "z"
    w_walk, z_walk = walk_frames(with_parts, [1, 2], 8), walk_frames(without, [1, 2], 8)
    assert np.abs(w_walk[0].astype(int) - z_walk[0]).max() <= 1  # the same key
    with torch.no_grad():  # frame 2 of 8 lies halfway between the keys: lerp of their ws
        from trainers.sampling import packed_rows
        ws = with_parts.mapping(packed_rows(16, 2, 1, takes_psi=True))  # seeds 1 and 2
        halfway = with_parts.synthesis(torch.lerp(ws[:1], ws[1:], 0.5), *with_parts.noise)
    from trainers.grid import to_uint8
    assert np.abs(w_walk[2].astype(int) - to_uint8(halfway)[0]).max() <= 1
    assert np.abs(w_walk[2].astype(int) - z_walk[2]).mean() > 0  # slerp in z is another path


def test_truncation_pulls_a_w_walk_toward_the_average(tmp_path):
    model = _version("stylegan2", parts=True, tmp_path=tmp_path, seed=2)
    free, truncated = walk_frames(model, [1, 2, 3], 6), walk_frames(model, [1, 2, 3], 6, truncation=0.0)
    assert _mean_change(truncated) < 1e-9 < _mean_change(free)  # psi 0: every key is w_avg


@pytest.mark.parametrize("arch", ["cond-dcgan", "stylegan2"])
def test_the_condition_moves_from_one_request_to_another(arch, tmp_path):
    model = _version(arch, VOCAB, parts=arch == "stylegan2", tmp_path=tmp_path, seed=3)
    blonde, black = condition_vector(model.meta, ["blonde hair"]), condition_vector(model.meta, ["black hair"])
    moving = walk_frames(model, [5], 6, c_from=blonde, c_to=black)  # one seed: the same face, other tags
    ends = [sample(model.generator, 16, 1, 5, c=c, takes_psi=model.meta.takes_psi)[0] for c in (blonde, black)]
    assert np.abs(moving[0].astype(int) - ends[0]).max() <= 1 and np.abs(moving[-1].astype(int) - ends[1]).max() <= 1
    assert 0 < _mean_change(moving)
    fixed = walk_frames(model, [5, 6], 6, c_from=blonde)
    assert np.abs(fixed[0].astype(int) - ends[0]).max() <= 1


def test_a_text_stylegan2_walks_in_w_through_its_exported_augmentation(tmp_path):
    model = _version("stylegan2", parts=True, tmp_path=tmp_path, seed=4, text=True)
    prompt = torch.randn(12)
    frames = walk_frames(model, [1, 2], 4, c_from=prompt)
    first = sample(model.generator, 16, 1, 1, c=prompt, takes_psi=True)[0]
    assert np.abs(frames[0].astype(int) - first).max() <= 1


@pytest.mark.parametrize("seeds, frames, moving, words", [
    ([1], 10, False, "2 to 64 key seeds"),
    ([], 10, True, "1 to 64 key seeds"),
    (list(range(65)), 10, False, "2 to 64 key seeds"),
    ([1, 2], 1, False, f"2 to {MAX_FRAMES} frames"),
    ([1, 2], MAX_FRAMES + 1, False, f"2 to {MAX_FRAMES} frames"),
    ([1, -2], 10, False, "seed must be an integer"),
])
def test_a_walk_out_of_bounds_is_refused(seeds, frames, moving, words):
    with pytest.raises(SamplingError, match=words):
        check_walk(seeds, frames, moving)


def test_a_condition_cannot_move_from_nothing():
    model = _version("dcgan")
    with pytest.raises(SamplingError, match="from a first request"):
        walk_frames(model, [1], 4, c_to=torch.ones(3))
