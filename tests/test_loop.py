"""The training loop in-process: it trains, checkpoints everything, and resumes exactly."""
import pytest
import torch

from orchestrator.spec import parse_spec
from trainers.checkpoint import generator_from_checkpoint, load_rank_state, load_state
from trainers.data.ingest import ingest
from trainers.loop import DirectoryReporter, GanLoop


@pytest.fixture(scope="module")
def dataset(faces, tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    ingest(faces, str(d), faces / "labels.csv", shard_mb=0.02)
    return str(d)


def make_spec(url, **train):
    t = {"steps": 12, "batch_size": 8, **train}
    return parse_spec({"name": "t", "data": {"url": url}, "model": {"arch": "dcgan", "z_dim": 16, "channels": 8},
                       "train": t, "checkpoint": {"every_steps": 6}}).to_dict()


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.state_dict().values() if p.is_floating_point()])


def test_tiny_run_trains_and_reports(dataset, tmp_path):
    rep = DirectoryReporter(tmp_path)
    before = flat(GanLoop(make_spec(dataset)).g)
    loop = GanLoop(make_spec(dataset))
    last = loop.run(rep)
    assert last["step"] == 12 and last["images_seen"] == 96 and last["img_per_sec"] > 0
    assert [c.name for c in rep.checkpoints] == ["checkpoint_000000006", "checkpoint_000000012"]
    assert not torch.equal(before, flat(loop.g))
    assert all(torch.isfinite(torch.tensor([m["loss_d"], m["loss_g"]])).all() for m in rep.metrics)


@pytest.mark.parametrize("train", [{}, {"loss": "hinge", "r1_gamma": 1.0, "ema": False}])
def test_resume_equals_straight_run(dataset, tmp_path, train):
    straight = GanLoop(make_spec(dataset, **train))
    rep = DirectoryReporter(tmp_path / "a")
    straight.run(rep)
    resumed = GanLoop(make_spec(dataset, **train))
    resumed.restore(rep.checkpoints[0])
    assert resumed.step == 6
    resumed.run(DirectoryReporter(tmp_path / "b"))
    for a, b in [(straight.g, resumed.g), (straight.d, resumed.d)] + (
            [(straight.g_ema, resumed.g_ema)] if straight.g_ema is not None else []):
        torch.testing.assert_close(flat(a), flat(b), rtol=0, atol=1e-6)
    assert straight.stream.state_dict() == resumed.stream.state_dict()


def test_checkpoint_holds_every_state_item(dataset, tmp_path):
    rep = DirectoryReporter(tmp_path)
    loop = GanLoop(make_spec(dataset))
    loop.run(rep)
    state = load_state(rep.checkpoints[-1])
    for key in ["g", "d", "g_ema", "opt_g", "opt_d", "scaler_g", "scaler_d", "step", "images_seen",
                "train_seconds", "stream", "spec", "world_size", "generator_config", "dataset_hash"]:
        assert key in state, key
    assert state["opt_g"]["state"] and state["stream"]["consumed"] == 96
    assert load_rank_state(rep.checkpoints[-1], 0)["noise"] is not None
    assert (rep.checkpoints[-1] / "grid.png").stat().st_size > 0
    g, info = generator_from_checkpoint(rep.checkpoints[-1])
    torch.testing.assert_close(flat(g), flat(loop.g_ema))
    assert info["step"] == 12 and g(torch.zeros(2, 16)).shape == (2, 3, 16, 16)


def test_wrong_resolution_is_refused(dataset):
    spec = make_spec(dataset)
    spec["data"]["resolution"] = 64
    with pytest.raises(ValueError, match="data.resolution=64.*16x16"):
        GanLoop(spec)
