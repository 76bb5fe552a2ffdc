"""Serving a registered generator (deploy/, `ganray serve`): through the CLI on the real embedded stack.

One cond-dcgan trained and registered through `ganray run` (one Ray Train fit), served with
`ganray serve NAME@champion`; a second version and a StyleGAN2 (with its truncation input) are
registered straight into the same MLflow server. Every answer is checked against `ganray generate`.
The first tests need no stack: the psi input, the truncation rules, the request checks, the args.
"""
from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import ganray
from orchestrator.stack.processes import free_port
from specs import COND_DCGAN, write_spec
from stack_mlflow import mlflow_client, register_untrained, serve_token

VOCAB_TAGS = ["hat", "glasses"]
JSON = {"Content-Type": "application/json"}
SHA = "0" * 64  # a token's sha256, as the args carry it


# -- no stack: the pieces -------------------------------------------------------------------------

def test_a_stylegan2_export_takes_psi_per_row_and_older_exports_still_sample():
    from trainers.generator_metadata import GeneratorMetadata, read_metadata
    from trainers.networks import PackedInputGenerator, build_models, generate_images
    from trainers.sampling import SamplingError, check_truncation, sample
    from trainers.spec import ModelSpec

    torch.manual_seed(0)
    g, _ = build_models(ModelSpec(arch="stylegan2", z_dim=8, channels=4, channels_max=16, mapping_layers=2,
                                  conditioning="tags"), 16, c_dim=2)
    g.mapping(torch.randn(16, 8), torch.ones(16, 2), update_w_avg=True)
    g.mapping.w_avg.mul_(50)  # far from 0: truncation must show
    packed = PackedInputGenerator(g).eval()
    meta = GeneratorMetadata(g.config, VOCAB_TAGS, "tags")
    assert packed.input_width == meta.input_width == 8 + 2 + 1 and meta.to_dict()["input"] == "z|c|psi"
    prog = torch.export.export(packed, (torch.zeros(2, 11),), dynamic_shapes=[{0: torch.export.Dim.AUTO}]).module()
    z, c = torch.randn(3, 8), torch.tensor([[1.0, 0.0]] * 3)
    psi = torch.tensor([[1.0], [0.5], [0.0]])  # one psi per row, as a batch of several requests has
    out = prog(torch.cat([z, c, psi], 1))
    for i, p in enumerate((1.0, 0.5, 0.0)):
        want = g.synthesis(g.mapping(z[i:i + 1], c[i:i + 1], truncation_psi=p), noise_mode="const")
        torch.testing.assert_close(out[i:i + 1], want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[0:1], generate_images(g, z[:1], c[:1]), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out[0], out[2], atol=1e-2)  # psi 0 pulls to the average w
    # sample() appends the psi column for such a generator only; the same seed gives the same image
    a = sample(prog, 8, 3, seed=7, c=c[0], truncation=0.5, takes_psi=True)
    b = sample(prog, 8, 3, seed=7, c=c[0], truncation=0.5, takes_psi=True)
    assert a.shape == (3, 16, 16, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, sample(prog, 8, 3, seed=7, c=c[0], truncation=1.0, takes_psi=True))
    # A version exported before psi (input z|c) still samples at 1, and refuses any other psi.
    old_prog = torch.export.export(packed, (torch.zeros(2, 10),), dynamic_shapes=[{0: torch.export.Dim.AUTO}])
    old = read_metadata({"ganray": {**meta.to_dict(), "input": "z|c"}})
    assert (old.takes_psi, old.input_width, old.input) == (False, 10, "z|c")
    np.testing.assert_array_equal(sample(old_prog.module(), 8, 3, seed=7, c=c[0]),
                                  sample(prog, 8, 3, seed=7, c=c[0], truncation=1.0, takes_psi=True))
    assert check_truncation(old, 1) == 1.0
    with pytest.raises(SamplingError, match="registered without a truncation input"):
        check_truncation(old, 0.7)
    assert read_metadata({"ganray": meta.to_dict()}) == meta  # the new form round-trips
    # A text-conditioned StyleGAN2 (c: a sentence embedding through G's conditioning augmentation) too.
    from trainers.networks import StyleGan2Generator

    text_g = StyleGan2Generator(8, 6, 16, 4, 16, None, 2, text_ca_dim=4).eval()
    zc = torch.randn(3, 14)
    torch.testing.assert_close(PackedInputGenerator(text_g)(torch.cat([zc, torch.ones(3, 1)], 1)),
                               generate_images(text_g, zc[:, :8], zc[:, 8:]), rtol=1e-4, atol=1e-4)


def test_truncation_is_stylegan2_only_finite_and_in_range():
    from trainers.generator_metadata import GeneratorMetadata
    from trainers.sampling import SamplingError, check_truncation

    cond = GeneratorMetadata({"arch": "cond-dcgan", "z_dim": 4, "c_dim": 2, "resolution": 16}, VOCAB_TAGS, "tags")
    style = GeneratorMetadata({"arch": "stylegan2", "z_dim": 4, "c_dim": 0, "resolution": 16})
    assert cond.input == "z|c" and style.input == "z|psi" and style.takes_psi and not cond.takes_psi
    assert check_truncation(cond, 1.0) == 1.0 and check_truncation(style, 0.25) == 0.25
    for meta, value, message in ((cond, 0.5, "cond-dcgan: truncation is StyleGAN2's psi and must be 1"),
                                 (style, 2.5, "between -2 and 2"), (style, float("nan"), "finite"),
                                 (style, True, "finite"), (style, "0.5", "finite")):
        with pytest.raises(SamplingError, match=message):
            check_truncation(meta, value, "models:/m/1")


BAD_BODIES = [  # (body bytes, words the error must hold)
    (b"{bad", "malformed JSON"),
    (b"\xff\xfe{", "malformed JSON"),
    (b"[" * 50000 + b"]" * 10, "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'"seed"', "JSON object"),
    (b'{"n": 0, "tags": ["hat"]}', "n must be between 1 and 64, got 0"),
    (b'{"n": 65, "tags": ["hat"]}', "n must be between 1 and 64, got 65"),
    (b'{"n": 2.5, "tags": ["hat"]}', "n must be an integer"),
    (b'{"n": true, "tags": ["hat"]}', "n must be an integer"),
    (b'{"seed": -1, "tags": ["hat"]}', "seed must be an integer from 0"),
    (b'{"seed": 99999999999999999999999, "tags": ["hat"]}', "seed must be an integer from 0"),
    (b'{"seed": "7", "tags": ["hat"]}', "seed must be an integer"),
    (b'{"tags": [1, 2]}', "tags must be a list of strings"),
    (b'{"tags": {"hat": 1}}', "tags must be a list of strings"),
    (b'{"tags": ["wings"]}', "unknown tag 'wings'; known tags: "),
    (b'{"prompt": "a cat in a hat"}', "has no text conditioning"),
    (b'{"prompt": 7}', "prompt must be a string"),
    (b'{"tags": ["hat"], "prompt": "a hat"}', "tags or a prompt, not both"),
    (b'{"tags": ["hat"], "truncation": 0.5}', "truncation is StyleGAN2's psi and must be 1"),
    (b'{"tags": ["hat"], "truncation": "x"}', "truncation must be a finite number"),
    (b'{"tags": ["hat"], "truncation": NaN}', "truncation must be a finite number"),
    (b'{"tags": ["hat"], "truncation": 1e999}', "truncation must be a finite number"),
    (b'{"tags": ["hat"], "steps": 3}', "unknown field(s) 'steps'"),
    (b'{"tags": ["hat"], "pad": "' + b"x" * (64 * 1024) + b'"}', "request body over 64 KB"),
]
# Bad only for a tag model without a tag-set table; with one (as a trained version has), every tag is drawn.
NO_TAGS = [(b"{}", "is tag-conditioned: give tags"), (b'{"tags": []}', "is tag-conditioned: give tags")]


def test_request_checks_turn_every_bad_body_into_a_reason():
    from deploy.loader import LoadedModel
    from deploy.request import BadRequest, parse_body, prepare
    from trainers.generator_metadata import GeneratorMetadata

    meta = GeneratorMetadata({"arch": "cond-dcgan", "z_dim": 4, "c_dim": 2, "resolution": 16}, VOCAB_TAGS, "tags")
    model = LoadedModel("m", 1, "champion", None, meta)
    for body, words in BAD_BODIES + NO_TAGS:
        with pytest.raises(BadRequest) as err:
            prepare(model, parse_body(body), max_pixels=10 ** 6)
        assert words in str(err.value), (body[:60], str(err.value))
    ok = prepare(model, parse_body(b'{"seed": 3, "n": 2, "tags": "Hat, glasses"}'), max_pixels=10 ** 6)
    assert ok.rows.shape == (2, 6) and ok.rows[:, 4:].tolist() == [[1.0, 1.0]] * 2


def test_the_serve_config_round_trips_through_its_args_and_refuses_what_cannot_work():
    from deploy.serve_config import ArgsError, ServeConfig
    from trainers.errors import UsageError
    from trainers.model_ref import ModelRef

    config = ServeConfig(ModelRef("faces", alias="champion"), poll_s=2, max_batch_size=4, num_gpus=1,
                         token_sha256=SHA)
    args = config.to_args()
    assert args == {"model": "faces@champion", "poll_s": 2.0, "max_batch_size": 4, "batch_wait_s": 0.01,
                    "replicas": 1, "num_cpus": 1.0, "num_gpus": 1.0, "rows_per_pass": 64, "max_queued_requests": 32,
                    "request_timeout_s": 60.0, "max_request_pixels": 64 * 256 * 256, "reload_min_interval_s": 2.0,
                    "token_file": None, "token_sha256": SHA, "private": False, "allow_origins": []}
    assert ServeConfig.from_args(args) == config and type(args["poll_s"]) is float
    assert ServeConfig.from_args(json.loads(json.dumps(args))) == config  # what the dashboard hands back
    pinned = ServeConfig.from_args({"model": "models:/faces/3", "token_sha256": SHA})
    assert pinned.model == ModelRef("faces", version=3) and pinned.to_args()["model"] == "faces/3"
    assert pinned == ServeConfig(ModelRef("faces", version=3), token_sha256=SHA)  # the defaults are the dataclass's
    for args, words in (({}, "model is required"), ({"model": "faces"}, "names no version: use NAME@ALIAS or "
                                                                        "NAME/VERSION"),
                        ({"model": "faces/0"}, "a model version is a whole number from 1"),
                        ({"model": "a b@c"}, "outside ganray's model-name grammar"),
                        ({"model": "f@v1.2"}, "the alias 'v1.2'"), ({"model": "f@latest"}, "reserved by MLflow"),
                        ({"model": 7}, "a model reference is text"),
                        ({"model": "f@c", "poll_s": 0}, "poll_s must be a number >= 0.1"),
                        ({"model": "f@c", "poll_s": "2"}, "poll_s must be a number >= 0.1, got '2'"),
                        ({"model": "f@c", "poll_s": float("inf")}, "poll_s must be a number"),
                        ({"model": "f@c", "max_batch_size": 0}, "max_batch_size must be an integer >= 1"),
                        ({"model": "f@c", "replicas": 1.5}, "replicas must be an integer"),
                        ({"model": "f@c", "replicas": True}, "replicas must be an integer"),
                        ({"model": "f@c", "token": "x"}, "unknown argument(s) token"), ([], "must be a mapping")):
        with pytest.raises(ArgsError) as err:
            ServeConfig.from_args({"token_sha256": SHA, **args} if isinstance(args, dict) and args else args)
        assert words in str(err.value) and isinstance(err.value, UsageError), (args, str(err.value))
    for model, words in ((ModelRef("faces"), "names no version"), ("faces@champion", "must be a ModelRef"),
                         (ModelRef("faces", version=3, alias="a"), "one version or one alias"),
                         (ModelRef("faces", version="3"), "one version or one alias"),
                         (ModelRef("my faces", version=3), "outside ganray's model-name grammar")):
        with pytest.raises(ArgsError, match=words):  # built in Python, it is checked as from_args checks
            ServeConfig(model)


def test_the_app_builder_checks_its_args():
    from deploy.app import build_app
    from deploy.serve_config import ArgsError

    assert type(build_app({"model": "faces@champion", "token_sha256": SHA})).__name__ == "Application"
    assert type(build_app({"model": "faces/3", "max_batch_size": 1, "poll_s": 2, "token_sha256": SHA})).__name__ == \
        "Application"
    for args, words in (({}, "model is required"), ({"model": "faces"}, "NAME@ALIAS or NAME/VERSION"),
                        ({"model": "f@c", "token": "x"}, "unknown argument(s) token"),
                        ({"model": "f@c"}, "every application needs a token")):
        with pytest.raises(ArgsError, match=words.replace("(", r"\(").replace(")", r"\)")):
            build_app(args)


# -- the stack: one trained model, served through the CLI ------------------------------------------

def post(url: str, body, fmt: str | None = None, timeout: float = 60) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + "generate" + (f"?format={fmt}" if fmt else ""), data=data, timeout=timeout,
                         headers={"Content-Type": "application/json"})


def reload(url: str, home: Path, name: str) -> dict:
    """POST /reload with the application's token, once more after Retry-After if it came too soon (429)."""
    headers = {"Authorization": f"Bearer {serve_token(home, name)}"}
    r = requests.post(url + "reload", headers=headers, timeout=120)
    if r.status_code == 429:
        time.sleep(float(r.headers["Retry-After"]))
        r = requests.post(url + "reload", headers=headers, timeout=120)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def npz(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    return np.load(io.BytesIO(response.content))["images"]


def generated(home: Path, out: Path, uri: str, *args: str) -> np.ndarray:
    ganray(home, "generate", uri, *args, "--out", str(out))
    return np.load(out)["images"] if out.suffix == ".npz" else np.asarray(Image.open(out).convert("RGB"))


def stop_all(home: Path, *names: str) -> None:
    for name in names:
        ganray(home, "serve", "--stop", name, check=False, timeout=180)


@pytest.fixture(scope="module")
def trained(stack, ganray_home, faces, tmp_path_factory):
    """A cond-dcgan trained for 8 steps and registered as srv version 1 through the CLI; alias champion on it."""
    ganray(ganray_home, "data", "ingest", str(faces), "s3://ganray/data/serve", "--labels", str(faces / "labels.csv"))
    spec = write_spec(tmp_path_factory.mktemp("serve") / "srv.yaml", "srv-a", "s3://ganray/data/serve",
                      model=COND_DCGAN, train={"steps": 8, "batch_size": 16}, scaling={"workers": 1},
                      checkpoint={"every_steps": 8, "keep": 1}, registry={"model_name": "srv"})
    summary = json.loads(ganray(ganray_home, "run", str(spec)).stdout)
    assert summary["model_uri"] == "models:/srv/1" and summary["state"] == "finished"
    c = mlflow_client(ganray_home)
    ganray(ganray_home, "promote", "srv", "--version", "1", "--alias", "champion")
    return {"client": c, "vocabulary": _vocabulary(c, "srv", 1)}


def _vocabulary(c: MlflowClient, name: str, version: int) -> list[str]:
    import mlflow

    from trainers.generator_metadata import read_metadata

    mlflow.set_tracking_uri(c.tracking_uri)
    return read_metadata(mlflow.models.get_model_info(f"models:/{name}/{version}").metadata).vocabulary


@pytest.fixture(scope="module")
def served(trained, ganray_home):
    port = free_port()
    proc = ganray(ganray_home, "serve", "srv@champion", "--port", str(port), "--poll-s", "2", timeout=400)
    url = proc.stdout.strip().splitlines()[-1]
    yield {**trained, "url": url, "port": port, "proc": proc}
    stop_all(ganray_home, "srv-style", "srv")


def test_serve_prints_the_url_last_and_answers_what_generate_draws(served, ganray_home, tmp_path):
    url, port = served["url"], served["port"]
    assert url == f"http://127.0.0.1:{port}/srv/"
    assert "serving srv@champion (version 1)" in served["proc"].stderr
    assert requests.get(url + "healthz", timeout=10).json() == {"status": "ok", "version": 1}
    model = requests.get(url + "model", timeout=10).json()
    vocabulary = served["vocabulary"]
    assert "hat" in vocabulary and "glasses" in vocabulary
    assert {k: v for k, v in model.items() if not k.startswith("tag_")} == {
        "name": "srv", "version": 1, "alias": "champion", "vocabulary": vocabulary, "resolution": 16,
        "conditioning": "tags", "arch": "cond-dcgan", "truncation": False, "input": "z|c"}
    r = post(url, {"seed": 5, "n": 6, "tags": ["hat", "Glasses"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
    assert (r.headers["X-Ganray-Model"], r.headers["X-Ganray-Version"]) == ("srv", "1")
    grid = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    want = generated(ganray_home, tmp_path / "g.png", "models:/srv@champion", "--n", "6", "--seed", "5",
                     "--tags", "hat,glasses")
    assert grid.shape == want.shape == (2 * 18 + 2, 3 * 18 + 2, 3)  # 2 rows of 3 cells of 16 px (pad 2)
    np.testing.assert_array_equal(grid, want)
    images = npz(post(url, {"seed": 5, "n": 6, "tags": "hat, glasses"}, fmt="npz"))
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, generated(ganray_home, tmp_path / "g.npz", "models:/srv/1", "--n", "6",
                                                    "--seed", "5", "--tags", "hat,glasses"))
    np.testing.assert_array_equal(images[0], grid[2:18, 2:18])  # the grid's cells are the samples
    one = npz(post(url, {"seed": 7, "n": 1, "tags": ["hat"]}, fmt="npz"))  # a single sample is padded, then cut
    np.testing.assert_array_equal(one, npz(post(url, {"seed": 7, "n": 3, "tags": ["hat"]}, fmt="npz"))[:1])
    assert not np.array_equal(npz(post(url, {"seed": 5, "n": 6, "tags": ["hat"]}, fmt="npz")), images)


def test_tags_never_seen_together_are_one_choice_and_a_request_of_them_is_refused_by_name(served, faces):
    """The trained version's tag-set table is its data's (240 faces, one hair, eye and background colour each)."""
    from trainers.data.ingest.synth import BACKGROUNDS, EYE_COLOURS, HAIR_COLOURS

    url = served["url"]
    model = requests.get(url + "model", timeout=10).json()
    assert model["tag_groups"] == [{"name": "hair", "tags": sorted(HAIR_COLOURS)},
                                   {"name": "eyes", "tags": sorted(EYE_COLOURS)},
                                   {"name": "background", "tags": sorted(BACKGROUNDS)}]
    assert model["tag_toggles"] == ["blush", "glasses", "hat", "ribbon"] and model["tag_sets_complete"] is True
    r = post(url, {"n": 4, "tags": ["blonde hair", "hat", "Black Hair", "red eyes", "blue eyes"]})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"] == (
        "model srv: tags never seen together in its training data (240 samples): 'blonde hair' with 'black hair'; "
        "'red eyes' with 'blue eyes'. Ask for at most one tag of each group; hair is one of: "
        f"{', '.join(sorted(HAIR_COLOURS))}; eyes is one of: {', '.join(sorted(EYE_COLOURS))}")
    rows = [line.split(",", 1)[1].strip('"').split(", ") for line in (faces / "labels.csv").read_text().splitlines()[1:]]
    assert any({"blonde hair", "blue eyes"} <= set(tags) for tags in rows)  # a pair the data has: accepted
    images = npz(post(url, {"seed": 3, "n": 4, "tags": ["blonde hair", "blue eyes", "hat"]}, fmt="npz"))
    assert images.shape == (4, 16, 16, 3)
    anything = npz(post(url, {"seed": 3, "n": 4}, fmt="npz"))  # "any" everywhere: all tags drawn from the data
    assert anything.shape == (4, 16, 16, 3) and not np.array_equal(anything, images)


def test_every_bad_request_is_a_400_with_its_reason_and_the_replica_goes_on(served):
    url = served["url"]
    for body, words in BAD_BODIES:
        r = post(url, body)
        assert r.status_code == 400 and words in r.json()["error"], (body[:60], r.status_code, r.text[:300])
    r = requests.post(url + "generate", data=b"x" * (200 * 1024), headers=JSON, timeout=30)  # declared over 64 KB
    assert r.status_code == 400 and r.json() == {"error": "request body over 64 KB"}
    chunked = requests.post(url + "generate", data=iter([b"{" + b" " * 4096] * 20), headers=JSON,
                            timeout=30)  # streamed
    assert chunked.status_code == 400 and chunked.json() == {"error": "request body over 64 KB"}
    r = requests.post(url + "generate?format=gif", json={"tags": ["hat"]}, timeout=30)
    assert r.status_code == 400 and "format must be one of png, npz" in r.json()["error"]
    assert requests.get(url + "generate", timeout=10).status_code == 405
    assert requests.get(url + "nothing-here", timeout=10).status_code == 404
    # the same replica still answers, correctly
    assert requests.get(url + "healthz", timeout=10).status_code == 200
    assert npz(post(url, {"seed": 1, "n": 2, "tags": ["hat"]}, fmt="npz")).shape == (2, 16, 16, 3)


def test_concurrent_clients_share_forward_passes_and_get_their_own_samples(served):
    url = served["url"]
    asks = [{"seed": 100 + 9 * i, "n": 1 + i % 5, "tags": [["hat"], ["glasses"], ["hat", "glasses"]][i % 3]}
            for i in range(16)]
    alone = [npz(post(url, a, fmt="npz")) for a in asks]
    barrier = threading.Barrier(len(asks))

    def together(ask):
        barrier.wait(timeout=30)
        r = post(url, ask, fmt="npz")
        return npz(r), int(r.headers["X-Ganray-Batch"])

    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(together, asks))
    for ask, want, (got, _) in zip(asks, alone, answers):
        assert got.shape == (ask["n"], 16, 16, 3)
        np.testing.assert_array_equal(got, want)
    assert max(batch for _, batch in answers) > 1  # one forward pass served several clients


def test_a_promotion_and_a_rollback_reach_the_endpoint_without_dropping_requests(
        served, ganray_home, tmp_path):
    url, c = served["url"], served["client"]
    v2 = register_untrained(c, "srv", "cond-dcgan", served["vocabulary"], seed=11)
    assert v2 == 2
    ask = {"seed": 21, "n": 3, "tags": ["hat"]}
    want = {v: generated(ganray_home, tmp_path / f"v{v}.npz", f"models:/srv/{v}", "--n", "3", "--seed", "21",
                         "--tags", "hat") for v in (1, 2)}
    assert not np.array_equal(want[1], want[2])
    answers, stop = [], threading.Event()

    def keep_asking():  # requests in flight while the version changes (bounded in time, not in count:
        deadline = time.monotonic() + 300  # a slow machine must not run out before the promotion lands)
        while not stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            r = post(url, ask, fmt="npz")
            answers.append((r.status_code, r.headers.get("X-Ganray-Version"), r.content, sent))

    client = threading.Thread(target=keep_asking)
    client.start()
    try:
        time.sleep(1.0)
        refused = ganray(ganray_home, "promote", "srv", "--version", str(v2), "--alias",
                         "champion", "--require", "tag_accuracy>=0.9", check=False)
        assert refused.returncode == 1 and "tag_acc" in refused.stderr  # no metric: the gate never passes
        assert reload(url, ganray_home, "srv") == {"version": 1}
        ganray(ganray_home, "promote", "srv", "--version", str(v2), "--alias", "champion")
        assert reload(url, ganray_home, "srv") == {"version": 2}
        swapped = time.monotonic()
        assert requests.get(url + "model", timeout=10).json()["version"] == 2
        deadline = swapped + 60  # a few requests sent after the swap (one in flight across it may say 1)
        while sum(a[3] > swapped for a in answers) < 3 and time.monotonic() < deadline and client.is_alive():
            time.sleep(0.1)
    finally:
        stop.set()
        client.join(timeout=120)
    assert len(answers) > 2 and all(status == 200 for status, _, _, _ in answers)
    for _, version, content, _ in answers:
        np.testing.assert_array_equal(np.load(io.BytesIO(content))["images"], want[int(version)])
    after = [version for _, version, _, sent in answers if sent > swapped]
    assert answers[0][1] == "1" and len(after) >= 3 and set(after) == {"2"}, after
    # Polling alone (poll_s 2): a rollback gives the alias back to version 1 and the endpoint follows.
    ganray(ganray_home, "rollback", "srv", "--alias", "champion")
    assert c.get_model_version_by_alias("srv", "champion").version == "1"
    moved, deadline = time.time(), time.time() + 30
    while requests.get(url + "model", timeout=10).json()["version"] != 1:
        assert time.time() < deadline, "the replica did not follow the alias within 30 s"
        time.sleep(0.5)
    assert time.time() - moved < 15
    np.testing.assert_array_equal(npz(post(url, ask, fmt="npz")), want[1])


def test_a_second_model_with_truncation_serves_beside_the_first_and_stops_alone(served, ganray_home, tmp_path):
    url, c = served["url"], served["client"]
    version = register_untrained(c, "srv-style", "stylegan2", [], seed=3, psi_export=True)
    other_port = ganray(ganray_home, "serve", "srv-style/1", "--port", str(free_port()), check=False)
    assert other_port.returncode == 2 and f"already runs on this cluster with HTTP port {served['port']}" in \
        other_port.stderr
    style_url = ganray(ganray_home, "serve", f"srv-style/{version}", timeout=400).stdout.strip().splitlines()[-1]
    assert style_url == f"http://127.0.0.1:{served['port']}/srv-style/"
    model = requests.get(style_url + "model", timeout=10).json()
    assert (model["arch"], model["truncation"], model["alias"], model["input"]) == ("stylegan2", True, None, "z|psi")
    for psi in (1.0, 0.5, 0.0):
        got = npz(post(style_url, {"seed": 4, "n": 3, "truncation": psi}, fmt="npz"))
        np.testing.assert_array_equal(got, generated(ganray_home, tmp_path / f"s{psi}.npz", f"models:/srv-style/{version}",
                                                     "--n", "3", "--seed", "4", "--truncation", str(psi)))
    assert not np.array_equal(npz(post(style_url, {"seed": 4, "n": 3, "truncation": 0.0}, fmt="npz")),
                              npz(post(style_url, {"seed": 4, "n": 3}, fmt="npz")))
    r = post(style_url, {"seed": 4, "n": 3, "tags": ["hat"]})
    assert r.status_code == 400 and "unconditional" in r.json()["error"]
    # truncations differ within one batch: each request gets its own psi
    asks = [{"seed": 4, "n": 3, "truncation": p} for p in (1.0, 0.5, 0.0, 0.5, 1.0, 0.0)]
    with ThreadPoolExecutor(len(asks)) as pool:
        got = list(pool.map(lambda a: npz(post(style_url, a, fmt="npz")), asks))
    for ask, images in zip(asks, got):
        np.testing.assert_array_equal(images, np.load(tmp_path / f"s{ask['truncation']}.npz")["images"])
    ganray(ganray_home, "serve", "--stop", "srv-style", timeout=180)
    assert requests.get(style_url + "healthz", timeout=10).status_code == 404
    assert requests.get(url + "healthz", timeout=10).status_code == 200  # the first model still serves


def test_the_deployed_config_carries_the_tracking_uri_and_no_secret(served, ganray_home, tracking_uri):
    token = (ganray_home / "ray" / "auth_token").read_text().strip()
    secret = json.loads((ganray_home / "credentials.json").read_text())["secret_key"]
    dashboard = json.loads((ganray_home / "profile.json").read_text())["dashboard_url"]
    assert requests.get(dashboard + "/api/serve/applications/", timeout=30).status_code == 401  # token auth is on
    details = requests.get(dashboard + "/api/serve/applications/", headers={"Authorization": f"Bearer {token}"},
                           timeout=30).json()
    config = details["applications"]["srv"]["deployed_app_config"]
    assert config["import_path"] == "deploy.app:build_app" and config["route_prefix"] == "/srv"
    from deploy.serve_config import ServeConfig, token_digest
    from trainers.model_ref import parse_ref

    bearer_token = serve_token(ganray_home, "srv")  # the endpoint's bearer token: only its sha256 is an arg
    assert config["args"] == ServeConfig(parse_ref("srv@champion"), poll_s=2.0,
                                         token_sha256=token_digest(bearer_token)).to_args()  # what the replicas read
    assert config["runtime_env"] == {"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}}
    blob = json.dumps(details) + served["proc"].stdout + served["proc"].stderr
    assert token not in blob and secret not in blob and bearer_token not in blob


def test_serve_refuses_what_it_cannot_serve(served, ganray_home):
    missing = ganray(ganray_home, "serve", "nosuch@champion", check=False)
    assert missing.returncode == 1 and "no registered model 'nosuch'" in missing.stderr
    no_alias = ganray(ganray_home, "serve", "srv@nosuchalias", check=False)
    assert no_alias.returncode == 1 and "model 'srv' has no alias 'nosuchalias' (versions: 1, 2" in no_alias.stderr
    for bad in ("srv", "srv/0", "s rv@champion", "srv@v1.2"):
        proc = ganray(ganray_home, "serve", bad, check=False)
        assert proc.returncode == 2 and "NAME@ALIAS or NAME/VERSION" in proc.stderr, proc.stderr
    both = ganray(ganray_home, "serve", "srv@champion", "--stop", "srv", check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    assert ganray(ganray_home, "serve", "--stop", "nosuch", check=False).returncode == 1


def test_serve_stop_takes_the_application_off_the_cluster(served, ganray_home):
    url = served["url"]
    assert requests.get(url + "healthz", timeout=10).status_code == 200
    proc = ganray(ganray_home, "serve", "--stop", "srv@champion", timeout=180)
    assert proc.stdout.strip() == "stopped srv"
    with pytest.raises(requests.ConnectionError):  # the last application: Serve itself is gone, its port free
        requests.get(url + "healthz", timeout=10)
    again = ganray(ganray_home, "serve", "--stop", "srv", check=False)
    assert again.returncode == 1 and "no application srv is served" in again.stderr
