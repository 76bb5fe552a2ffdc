"""Metrics: the FID Inception layout and its weights file, FID/KID math, the real-statistics cache,
the tag judge and per-tag accuracy, and tag requests at generation time."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from specs import DCGAN, job_spec
from trainers.generator_metadata import GeneratorMetadata, MetadataError, read_metadata
from trainers.grid import from_uint8
from trainers.sampling import SamplingError, condition_vector
from trainers.conditioning import TagEncoder, UnknownTagError
from trainers.metrics.fid import RealStatistics, feature_stats, frechet_distance, kernel_inception_distance
from trainers.metrics.inception import (InceptionV3Features, WeightsError, features, load_inception, preprocess,
                                        resolve_weights)
from trainers.metrics.tag_accuracy import load_or_train_judge, predict, score

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised FID-layout weights file, saved as the converted TF weights are (no BN counters)."""
    torch.manual_seed(0)
    net = InceptionV3Features()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):  # keeps activations alive through 90+ layers, unlike the default init
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


def images(seed, n=12, res=16, scale=1.0):
    return (np.random.default_rng(seed).integers(0, 256, (n, res, res, 3)) * scale).astype(np.uint8)


def test_the_fid_layout_matches_pytorch_fid_names_and_sizes():
    sd = InceptionV3Features().state_dict()
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in sd and "Conv2d_1a_3x3.conv.weight" in sd
    assert tuple(sd["fc.weight"].shape) == (1008, 2048) and tuple(sd["Mixed_5b.branch_pool.conv.weight"].shape) == (
        32, 192, 1, 1)
    n = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert n == 23885392  # the tensors of pt_inception-2015-12-05-6726825d.pth (91 MiB of float32)


def test_weights_load_strictly_and_features_are_2048_wide(weights):
    net = load_inception(weights)
    f = features(net, images(0, n=3))
    assert f.shape == (3, 2048) and np.isfinite(f).all() and f.std() > 0


def test_fid_and_kid_tell_distributions_apart(weights):
    net = load_inception(weights)
    a, b, dark = (features(net, images(0, n=8)), features(net, images(1, n=8)),
                  features(net, images(0, n=8, scale=0.3)))
    same = frechet_distance(*feature_stats(a), *feature_stats(a))
    other = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert abs(same) < 1e-4 * other
    assert frechet_distance(*feature_stats(a), *feature_stats(dark)) > other > 0
    assert kernel_inception_distance(a, dark, 10, 8) > kernel_inception_distance(a, b, 10, 8)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)


def test_kid_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    assert abs(kernel_inception_distance(x, y, 20, 200)) < 0.02
    assert kernel_inception_distance(x, y + 1.0, 20, 200) > 0.5


def test_images_are_resized_with_pil_bicubic_to_299():
    img = images(3, n=1, res=32)
    x = preprocess(img)
    ref = np.asarray(Image.fromarray(img[0]).resize((299, 299), Image.Resampling.BICUBIC)).astype(np.float32)
    assert x.shape == (1, 3, 299, 299)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), ref / 127.5 - 1, atol=1e-6)


def test_no_weights_is_a_clear_error_never_a_substitute(tmp_path, monkeypatch):
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", "http://127.0.0.1:9/w/pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(WeightsError, match="neither eval.fid_weights nor GANRAY_FID_WEIGHTS names a file, so "
                                           "ganray downloaded them and failed: http://127.0.0.1:9/"):
        resolve_weights(None)  # the download itself: tests/test_weights_download.py
    monkeypatch.setenv("GANRAY_FID_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="GANRAY_FID_WEIGHTS=.*no such file"):
        resolve_weights(None)
    assert resolve_weights(__file__).name == "test_metrics.py"  # the spec's path wins over the environment


def test_weights_of_another_layout_are_refused_naming_the_keys(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, bad)
    with pytest.raises(WeightsError, match=r"not the FID InceptionV3 layout.*missing: .*unexpected: conv1.weight"):
        load_inception(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read Inception weights"):
        load_inception(tmp_path / "junk.pth")


def test_real_statistics_are_cached_per_dataset_and_weights(weights):
    net = load_inception(weights)
    calls = []

    def chunks():
        calls.append(1)
        yield images(0, n=4)
        yield images(1, n=4)

    stats, cached = RealStatistics.load_or_compute("hashA", weights, 6, net, chunks)
    assert not cached and stats.num_images == 6 and stats.mu.shape == (2048,) and stats.features.shape == (6, 2048)
    again, cached = RealStatistics.load_or_compute("hashA", weights, 6, net, chunks)
    assert cached and len(calls) == 1
    np.testing.assert_array_equal(again.sigma, stats.sigma)
    _, cached = RealStatistics.load_or_compute("hashB", weights, 6, net, chunks)
    assert not cached and len(calls) == 2


def test_score_counts_requested_tags_per_tag_and_overall():
    vocab = ["a", "b", "c"]
    requested = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    probs = np.array([[0.9, 0.8, 0.2], [0.7, 0.6, 0.1], [0.1, 0.2, 0.9], [0.4, 0.1, 0.1]])
    s = score(probs, requested, vocab)
    assert s["tag_acc.a"] == pytest.approx(2 / 3) and s["tag_acc.b"] == 1.0 and s["tag_acc.c"] == 0.5
    assert s["tag_acc"] == pytest.approx(4 / 6) and s["tag_acc_min"] == 0.5
    assert s["tag_acc_false_pos"] == pytest.approx(1 / 6) and s["tag_acc_exact"] == 0.5


def test_the_judge_learns_real_tags_and_is_cached():
    rng = np.random.default_rng(0)
    n, imgs, c = 60, [], []
    for i in range(n):  # tag "red": a red image; tag "square": a bright square in the middle
        red, square = i % 2 == 0, i % 3 == 0
        img = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
        img[..., 0] += 180 if red else 0
        if square:
            img[5:11, 5:11] = 250
        imgs.append(img)
        c.append([float(red), float(square)])
    data = (np.stack(imgs), np.array(c, dtype=np.float32))
    judge, scores, cached = load_or_train_judge("h1", lambda: data, ["red", "square"], epochs=12)
    assert not cached and scores["judge_real_acc"] == 1.0
    assert score(predict(judge, data[0]), data[1], ["red", "square"])["tag_acc_exact"] > 0.9
    _, again, cached = load_or_train_judge("h1", lambda: pytest.fail("retrained"), ["red", "square"], epochs=12)
    assert cached and again == scores


def test_tag_requests_are_checked_against_the_vocabulary():
    enc = TagEncoder(["blonde hair", "blue eyes", "hat"])
    torch.testing.assert_close(enc.encode_request(["hat", "blonde hair"]), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(UnknownTagError, match="'green hair'.*known tags: blonde hair, blue eyes, hat"):
        enc.encode_request(["green hair"])
    meta = GeneratorMetadata({"arch": "cond-dcgan", "z_dim": 4, "c_dim": 3, "resolution": 16}, enc.vocabulary, "tags")
    torch.testing.assert_close(condition_vector(meta, ["Blue  Eyes"], "models:/m/1"), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(SamplingError, match="unknown tag 'wings'; known tags: blonde hair, blue eyes, hat"):
        condition_vector(meta, ["wings"], "models:/m/1")
    with pytest.raises(SamplingError, match="tag-conditioned: give tags"):
        condition_vector(meta, None, "models:/m/1")
    plain = GeneratorMetadata({"arch": "dcgan", "z_dim": 4, "c_dim": 0, "resolution": 16})
    with pytest.raises(SamplingError, match="unconditional"):
        condition_vector(plain, ["hat"], "models:/m/1")
    assert condition_vector(plain, None, "models:/m/1") is None


def test_registered_metadata_round_trips_and_older_versions_still_read():
    info = {"generator_config": {"arch": "cond-dcgan", "z_dim": 8, "c_dim": 2, "resolution": 32}, "step": 40,
            "tags": ["hat", "smile"], "conditioning": "tags", "dataset_hash": "abc",
            "evaluation": {"tag_acc": 0.9, "fid": float("nan"), "eval_settings": "x", "per_tag": [1, 2]}}
    meta = GeneratorMetadata.from_checkpoint_info(info)
    assert meta.evaluation == {"tag_acc": 0.9, "eval_settings": "x"}  # finite numbers and strings only
    back = read_metadata({"ganray": meta.to_dict()})
    assert back == meta and (back.z_dim, back.c_dim, back.resolution, back.arch) == (8, 2, 32, "cond-dcgan")
    old = {"ganray": {"generator_config": info["generator_config"], "tags": ["hat", "smile"], "c_dim": 2}}
    assert read_metadata(old).vocabulary == ["hat", "smile"]  # registered before "vocabulary" was named
    with pytest.raises(MetadataError, match="not registered by ganray"):
        read_metadata({"other": {}}, "models:/x/1")
    with pytest.raises(MetadataError, match="takes 2 tags but its metadata lists 1"):
        read_metadata({"ganray": {**old["ganray"], "tags": ["hat"], "conditioning": "tags"}}, "models:/x/1")


class ReplayGenerator(nn.Module):
    """Returns the given images in turn, one per z (collapsed: always the first)."""

    def __init__(self, images_: np.ndarray, collapsed: bool = False):
        super().__init__()
        self.z_dim, self.images, self.collapsed, self.served = 4, from_uint8(images_), collapsed, 0

    def forward(self, z, c=None):
        idx = [0] * len(z) if self.collapsed else [(self.served + i) % len(self.images) for i in range(len(z))]
        self.served += len(z)
        return self.images[idx]


def test_precision_and_recall_through_the_evaluation_find_a_collapsed_generator(dataset, weights):
    from trainers.data.stream.shard_stream import read_manifest
    from trainers.evaluation import Evaluator
    from trainers.stored_order import iter_samples

    spec = job_spec("t", dataset, model=DCGAN, eval={"metrics": ["pr"], "fid_weights": str(weights),
                                                     "num_samples": 8, "num_real": 8})
    ev = Evaluator(spec, read_manifest(dataset), None)
    real = np.stack([s["image"] for s in iter_samples(dataset, 8)])  # the images the real statistics read
    replay = ev.evaluate(ReplayGenerator(real), 0)
    assert (replay["precision"], replay["recall"]) == (1.0, 1.0) and "fid" not in replay
    assert "precision/recall: k=3 nearest neighbours on 8 real and 8 generated" in replay["eval_settings"]
    collapsed = ev.evaluate(ReplayGenerator(real, collapsed=True), 0)
    assert collapsed["precision"] == 1.0 and collapsed["recall"] <= 1 / 8  # at most the one image it repeats
