"""POST /walk: the latent walk of `ganray generate --walk` answered as an animated WebP or GIF.

First without a stack: every bad body is a reason (as /generate's), the walk's tag sets ("the same face,
other hair"), the animation round-trips through Pillow. Then through the real server: an untrained
cond-dcgan with the built-in faces' tag-set table and a StyleGAN2 (walked in W when its version has the
W exports, in z otherwise) are registered in the session stack and served with `ganray serve`; a walk's
frames are the asked number, its first frame is /generate's sample of the first key seed, consecutive
frames differ less than the key frames do, and the loop closes.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageSequence

from test_tag_groups import BACKS, EYES, HAIR, faces_table, vocabulary_of

FACES_SETS = faces_table(240, 3)
FACES_VOCAB = vocabulary_of(FACES_SETS)
CONFIG = {"arch": "cond-dcgan", "z_dim": 4, "c_dim": len(FACES_VOCAB), "resolution": 16}

BAD_WALKS = [  # (body, words the error must hold)
    (b"{bad", "malformed JSON"),
    (b"[1]", "JSON object"),
    (b"{}", "seeds must be a list of 2 to 16 key seeds"),
    (b'{"seeds": [1]}', "seeds must be a list of 2 to 16 key seeds (integers) (one seed walks only while"),
    (b'{"seeds": [], "tags_to": ["hat"]}', "seeds must be a list of 1 to 16 key seeds"),
    (b'{"seeds": ' + json.dumps(list(range(17))).encode() + b"}", "seeds must be a list of 2 to 16"),
    (b'{"seeds": "1,2"}', "seeds must be a list"),
    (b'{"seeds": [1, 2.5]}', "seeds must be integers, got 2.5"),
    (b'{"seeds": [1, true]}', "seeds must be integers, got True"),
    (b'{"seeds": [1, -3]}', "seed must be an integer from 0"),
    (b'{"seeds": [1, 2], "frames": 1}', "frames must be between 2"),
    (b'{"seeds": [1, 2, 3], "frames": 2}', "frames must be between 3 (one per key seed at least) and 240"),
    (b'{"seeds": [1, 2], "frames": 241}', "and 240, got 241"),
    (b'{"seeds": [1, 2], "frames": "9"}', "frames must be an integer"),
    (b'{"seeds": [1, 2], "fps": 0}', "fps must be between 1 and 50"),
    (b'{"seeds": [1, 2], "fps": 51}', "fps must be between 1 and 50"),
    (b'{"seeds": [1, 2], "steps": 3}', "unknown field(s) 'steps'"),
    (b'{"seeds": [1, 2], "tags": ["wings"]}', "unknown tag 'wings'"),
    (b'{"seeds": [1, 2], "tags_to": ["wings"]}', "unknown tag 'wings'"),
    (b'{"seeds": [1, 2], "tags": ["blonde hair", "black hair"]}', "'blonde hair' with 'black hair'"),
    (b'{"seeds": [1, 2], "tags_to": ["red eyes", "blue eyes"]}', "'red eyes' with 'blue eyes'"),
    (b'{"seeds": [1, 2], "tags": ["hat"], "prompt": "a hat"}', "not both"),
    (b'{"seeds": [1, 2], "tags_to": ["hat"], "prompt": "a hat"}', "not both"),
    (b'{"seeds": [1, 2], "prompt_to": "a hat"}', "prompt_to moves the walk from a prompt: give prompt too"),
    (b'{"seeds": [1, 2], "prompt": "a cat"}', "has no text conditioning"),
    (b'{"seeds": [1, 2], "truncation": 0.5}', "truncation is StyleGAN2's psi and must be 1"),
    (b'{"seeds": [1, 2], "truncation": NaN}', "truncation must be a finite number"),
    (b'{"seeds": [1, 2], "tags": ["\\ud800"]}', "lone surrogate"),
    (b'{"seeds": [1, 2], "pad": "' + b"x" * (64 * 1024) + b'"}', "request body over 64 KB"),
]


def faces_model(name: str = "faces"):
    from deploy.loader import LoadedModel
    from trainers.generator_metadata import GeneratorMetadata

    return LoadedModel(name, 1, None, None, GeneratorMetadata(CONFIG, FACES_VOCAB, "tags", tag_sets=FACES_SETS))


def test_every_bad_walk_is_a_reason_before_anything_runs():
    from deploy.request import BadRequest
    from deploy.walk_request import parse_walk, parse_walk_format, prepare_walk

    model = faces_model()
    for body, words in BAD_WALKS:
        with pytest.raises(BadRequest) as err:
            prepare_walk(model, parse_walk(body), max_pixels=10 ** 6)
        assert words in str(err.value), (body[:60], str(err.value))
    with pytest.raises(BadRequest, match="frames=240 frames of 16x16 are 61,440 pixels, over this endpoint's budget "
                                         r"of 20,000 pixels per request \(max_request_pixels\): ask for at most 78 frames"):
        prepare_walk(model, parse_walk(b'{"seeds": [1, 2], "frames": 240}'), max_pixels=20_000)
    assert parse_walk_format(None) == "webp" and parse_walk_format("GIF") == "gif"
    with pytest.raises(BadRequest, match="format must be one of webp, gif for a walk, got 'mp4'"):
        parse_walk_format("mp4")


def test_a_walk_keeps_one_tag_set_and_tags_to_changes_only_what_it_names():
    from deploy.walk_request import parse_walk, prepare_walk
    from trainers.sampling import condition_rows

    model = faces_model()
    fixed = prepare_walk(model, parse_walk(b'{"seeds": [7, 9], "frames": 6, "tags": ["blonde hair"]}'), 10 ** 6)
    assert (fixed.seeds, fixed.frames, fixed.fps, fixed.c_to, fixed.truncation) == ([7, 9], 6, 12, None, 1.0)
    # one tag set for the walk: /generate's first sample's (seed 7), open tags drawn from the data
    assert torch.equal(fixed.c_from, condition_rows(model.meta, ["blonde hair"], 1, 7)[0])
    names = [t for t, on in zip(FACES_VOCAB, fixed.c_from.tolist()) if on]
    assert "blonde hair" in names and len(set(names) & set(EYES)) == 1 and len(set(names) & set(BACKS)) == 1
    moved = prepare_walk(model, parse_walk(b'{"seeds": [7, 9], "frames": 6, "tags": ["blonde hair"], '
                                           b'"tags_to": ["Black Hair"]}'), 10 ** 6)
    assert torch.equal(moved.c_from, fixed.c_from)
    to_names = [t for t, on in zip(FACES_VOCAB, moved.c_to.tolist()) if on]
    assert to_names == sorted((set(names) - {"blonde hair"}) | {"black hair"}, key=FACES_VOCAB.index)
    # a to-tag of a group replaces the drawn one of that group ("sky background" drawn: "dark background" asked)
    drawn_back = (set(names) & set(BACKS)).pop()
    other = next(b for b in BACKS if b != drawn_back)
    swap = prepare_walk(model, parse_walk(json.dumps({"seeds": [7, 9], "tags": ["blonde hair"],
                                                      "tags_to": ["blonde hair", other]}).encode()), 10 ** 6)
    swapped = {t for t, on in zip(FACES_VOCAB, swap.c_to.tolist()) if on}
    assert swapped == (set(names) - {drawn_back}) | {other}
    one = prepare_walk(model, parse_walk(b'{"seeds": [7], "frames": 6, "tags_to": ["black hair"]}'), 10 ** 6)
    assert one.seeds == [7] and not torch.equal(one.c_from, one.c_to)  # one face, its tags moving
    anything = prepare_walk(model, parse_walk(b'{"seeds": [3, 4]}'), 10 ** 6)  # "any" everywhere: drawn
    assert anything.frames == 24 and anything.c_from.sum() >= 3


def test_an_unconditional_walk_takes_no_tags():
    from deploy.loader import LoadedModel
    from deploy.request import BadRequest
    from deploy.walk_request import parse_walk, prepare_walk
    from trainers.generator_metadata import GeneratorMetadata

    plain = LoadedModel("plain", 1, None, None, GeneratorMetadata({"arch": "stylegan2", "z_dim": 4, "c_dim": 0,
                                                                   "resolution": 16}))
    walk = prepare_walk(plain, parse_walk(b'{"seeds": [1, 2, 3], "truncation": 0.5}'), 10 ** 6)
    assert (walk.c_from, walk.c_to, walk.truncation) == (None, None, 0.5)
    for body in (b'{"seeds": [1, 2], "tags": ["hat"]}', b'{"seeds": [1, 2], "tags_to": ["hat"]}'):
        with pytest.raises(BadRequest, match="is unconditional"):
            prepare_walk(plain, parse_walk(body), 10 ** 6)


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_frames_become_a_looping_animation_with_every_frame(fmt):
    from trainers.animation import encode_animation

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    data = encode_animation(frames, fmt, fps=10)
    image = Image.open(io.BytesIO(data))
    assert image.format == fmt.upper() and image.n_frames == 9 and image.info["loop"] == 0
    image.seek(2)
    image.load()
    assert image.info["duration"] == 100  # 10 fps
    image.seek(0)
    back = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)])
    if fmt == "webp":  # lossless: every pixel
        np.testing.assert_array_equal(back, frames)
    else:  # a palette per frame: near
        assert np.abs(back.astype(int) - frames).mean() < 40


# -- through the real server -------------------------------------------------------------------------

def frames_of(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(io.BytesIO(
        response.content)))]).astype(int)


def walk(url: str, body, fmt: str | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + "walk" + (f"?format={fmt}" if fmt else ""), data=data, timeout=120,
                         headers={"Content-Type": "application/json"})


def sample(url: str, body: dict) -> np.ndarray:
    r = requests.post(url + "generate?format=npz", json=body, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return np.load(io.BytesIO(r.content))["images"].astype(int)


@pytest.fixture(scope="module")
def walk_urls(stack, ganray_home):
    from conftest import ganray
    from orchestrator.stack.processes import free_port
    from stack_mlflow import mlflow_client, register_untrained

    c = mlflow_client(ganray_home)
    faces = register_untrained(c, "walk-faces", "cond-dcgan", FACES_VOCAB, seed=4, tag_sets=FACES_SETS)
    style = register_untrained(c, "walk-style", "stylegan2", [], seed=5)  # through the registry: W exports
    try:
        first = ganray(ganray_home, "serve", f"walk-faces/{faces}", "--port", str(free_port()), timeout=400)
        second = ganray(ganray_home, "serve", f"walk-style/{style}", timeout=400)
        yield first.stdout.strip().splitlines()[-1], second.stdout.strip().splitlines()[-1]
    finally:
        for name in ("walk-style", "walk-faces"):
            ganray(ganray_home, "serve", "--stop", name, check=False, timeout=180)


def test_a_served_walk_has_the_asked_frames_starts_at_the_first_seeds_sample_and_moves_smoothly(walk_urls):
    url, _ = walk_urls
    r = walk(url, {"seeds": [3, 11, 20], "frames": 15, "tags": ["blonde hair"], "fps": 10})
    assert r.headers["content-type"] == "image/webp" and r.headers["X-Ganray-Frames"] == "15"
    assert (r.headers["X-Ganray-Model"], r.headers["X-Ganray-Walk-Space"]) == ("walk-faces", "z")
    frames = frames_of(r)
    assert frames.shape == (15, 16, 16, 3)
    # the first frame is /generate's sample of the first key seed (the walk's one tag set is that sample's)
    assert np.abs(frames[0] - sample(url, {"seed": 3, "n": 1, "tags": ["blonde hair"]})[0]).max() <= 2
    steps = np.abs(np.diff(np.concatenate([frames, frames[:1]]), axis=0)).mean(axis=(1, 2, 3))  # loop closes
    keys = [np.abs(frames[a] - frames[b]).mean() for a, b in ((0, 5), (5, 10), (10, 0))]
    assert steps.max() < min(keys), (steps, keys)
    gif = walk(url, {"seeds": [3, 11], "frames": 8, "tags": ["blonde hair"]}, fmt="gif")
    assert gif.headers["content-type"] == "image/gif" and frames_of(gif).shape == (8, 16, 16, 3)
    moved = frames_of(walk(url, {"seeds": [3, 11], "frames": 8, "tags": ["blonde hair"], "tags_to": ["black hair"]}))
    fixed = frames_of(walk(url, {"seeds": [3, 11], "frames": 8, "tags": ["blonde hair"]}))
    np.testing.assert_array_equal(moved[0], fixed[0])  # the same face at the start, other hair at the end
    assert np.abs(moved[-1] - fixed[-1]).mean() > 0


def test_every_bad_walk_is_a_400_through_the_server_and_it_goes_on(walk_urls):
    url, _ = walk_urls
    for body, words in BAD_WALKS:
        r = walk(url, body)
        assert r.status_code == 400 and words in r.json()["error"], (body[:60], r.status_code, r.text[:300])
    r = walk(url, {"seeds": [1, 2]}, fmt="mp4")
    assert r.status_code == 400 and "format must be one of webp, gif for a walk" in r.json()["error"]
    assert requests.get(url + "walk", timeout=10).status_code == 405
    assert frames_of(walk(url, {"seeds": [1, 2], "frames": 4})).shape == (4, 16, 16, 3)


def test_a_stylegan2_with_w_exports_walks_in_w_with_its_truncation(walk_urls):
    _, url = walk_urls
    r = walk(url, {"seeds": [1, 2], "frames": 6, "truncation": 0.5})
    assert r.headers["X-Ganray-Walk-Space"] == "w" and r.headers["X-Ganray-Frames"] == "6"
    frames = frames_of(r)
    assert np.abs(frames[0] - sample(url, {"seed": 1, "n": 1, "truncation": 0.5})[0]).max() <= 2
    assert np.abs(frames[3] - sample(url, {"seed": 2, "n": 1, "truncation": 0.5})[0]).max() <= 2
    assert not np.array_equal(frames, frames_of(walk(url, {"seeds": [1, 2], "frames": 6})))
    long = walk(url, {"seeds": [1, 2, 3], "frames": 65}, fmt="gif")  # passes of 64 rows (rows_per_pass) and 1
    assert long.headers["X-Ganray-Walk-Space"] == "w" and frames_of(long).shape == (65, 16, 16, 3)
