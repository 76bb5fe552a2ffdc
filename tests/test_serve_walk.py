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
    (b'{"seeds": [1]}', "seeds must be a list of 2 to 16 key seeds"),
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
    from deploy.encoding import encode_animation

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
