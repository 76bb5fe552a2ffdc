"""The training loop in-process: every architecture trains, checkpoints everything, and resumes exactly."""
import json
import math

import pytest
import torch

from reporters import DirectoryReporter
from specs import COND_DCGAN, DCGAN, STYLEGAN2, job_spec
from trainers.checkpoints.format import generator_from_checkpoint, load_rank_state, load_state
from trainers.loop import GanLoop, accumulation_rounds
from trainers.loss import GanLoss
from trainers.networks import build_models
from trainers.spec import ModelSpec, TrainSpec

pytestmark = pytest.mark.usefixtures("private_cache")
STYLEGAN2_TAGS = {**STYLEGAN2, "conditioning": "tags"}


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.state_dict().values() if p.is_floating_point()])


def test_tiny_run_trains_and_reports(dataset, tmp_path):
    spec = job_spec("t", dataset, model=DCGAN, train={"steps": 12, "batch_size": 8}, checkpoint={"every_steps": 6})
    rep = DirectoryReporter(tmp_path)
    before = flat(GanLoop(spec).g)
    loop = GanLoop(spec)
    last = loop.run(rep)
    assert last["step"] == 12 and last["images_seen"] == 96 and last["img_per_sec"] > 0
    assert [c.name for c in rep.checkpoints] == ["checkpoint_000000006", "checkpoint_000000012"]
    assert not torch.equal(before, flat(loop.g))
    assert all(torch.isfinite(torch.tensor([m["loss_d"], m["loss_g"]])).all() for m in rep.metrics)
    assert 0 <= last["data_wait_frac"] <= 1 and last["sec_per_kimg"] > 0


@pytest.mark.parametrize("model,train", [
    (COND_DCGAN, {"dragan_lambda": 1.0, "augment": "diffaug"}),
    (STYLEGAN2_TAGS, {"r1_gamma": 1.0, "r1_interval": 4, "pl_weight": 2.0, "pl_interval": 2, "lr_g": 0.002,
                      "lr_d": 0.002, "beta1": 0.0, "beta2": 0.99}),
], ids=["cond-dcgan", "stylegan2"])
def test_every_conditional_arch_trains_on_tags(dataset, tmp_path, model, train):
    loop = GanLoop(job_spec("t", dataset, model=model, checkpoint={"every_steps": 8},
                            train={"steps": 8, "batch_size": 8, "report_every_s": 1e-6, **train}))
    before = flat(loop.g)
    rep = DirectoryReporter(tmp_path)
    last = loop.run(rep)
    seen = {k for m in rep.metrics for k in m}
    assert last["step"] == 8 and not torch.equal(before, flat(loop.g))
    assert loop.tags.vocabulary == loop.stream.manifest.vocabulary and loop.g.c_dim == len(loop.tags.vocabulary) > 5
    for key in ["loss_d", "loss_g", "d_real", "d_fake"]:
        assert math.isfinite(last[key]), key
    if model["arch"] == "cond-dcgan":
        assert math.isfinite(last["aux_real"]) and math.isfinite(last["dragan_penalty"]) and last["augment_p"] == 1.0
    else:  # lazy regularisers ran on their own phases, with Adam rescaled by I/(I+1)
        assert {"r1_penalty", "pl_penalty"} <= seen and len(rep.metrics) == 8
        assert loop.opt_d.param_groups[0]["lr"] == pytest.approx(0.002 * 4 / 5)
        assert loop.opt_g.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (2 / 3))
        assert float(loop.loss.pl_mean) > 0


RESUME_CASES = {
    "dcgan": (DCGAN, {}),
    "dcgan-hinge-r1": (DCGAN, {"loss": "hinge", "r1_gamma": 1.0, "r1_interval": 1, "ema": False}),
    "cond-dcgan-dragan-diffaug": (COND_DCGAN, {"dragan_lambda": 1.0, "augment": "diffaug"}),
    "stylegan2-lazy-r1-pl-ada": (STYLEGAN2, {"r1_gamma": 1.0, "r1_interval": 4, "pl_weight": 2.0, "pl_interval": 2,
                                             "augment": "diffaug", "augment_p": 0.0, "ada_target": 0.6,
                                             "ada_interval": 1, "ada_kimg": 1}),
    "stylegan2-tags-accumulated": (STYLEGAN2_TAGS, {"r1_gamma": 1.0, "r1_interval": 4, "max_batch_per_worker": 4}),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_equals_straight_run(dataset, tmp_path, case):
    model, train = RESUME_CASES[case]
    steps = 8 if model["arch"] == "stylegan2" else 12  # lazy phases at steps 0, 2, 4, 6: some after the restart
    spec = job_spec("t", dataset, model=model, train={"steps": steps, "batch_size": 8, **train},
                    checkpoint={"every_steps": steps // 2})
    straight = GanLoop(spec)
    rep = DirectoryReporter(tmp_path / "a")
    straight.run(rep)
    resumed = GanLoop(spec)
    resumed.restore(rep.checkpoints[0])
    assert resumed.step == steps // 2
    resumed.run(DirectoryReporter(tmp_path / "b"))
    pairs = [(straight.g, resumed.g), (straight.d, resumed.d)]
    if straight.g_ema is not None:
        pairs.append((straight.g_ema, resumed.g_ema))
    for a, b in pairs:
        torch.testing.assert_close(flat(a), flat(b), rtol=0, atol=1e-6)
    assert straight.stream.state_dict() == resumed.stream.state_dict()
    if straight.augment is not None:
        assert straight.augment.state_dict() == resumed.augment.state_dict()
    if train.get("ada_target"):
        assert straight.augment.last_rt is not None  # p was really adjusted (alike in both runs)
    torch.testing.assert_close(straight.loss.pl_mean, resumed.loss.pl_mean, rtol=0, atol=1e-6)


def _assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("model,train", [
    (DCGAN, {"precision": "fp16"}),
    (STYLEGAN2_TAGS, {"r1_gamma": 1.0, "r1_interval": 2, "pl_weight": 2.0, "pl_interval": 2, "augment": "diffaug",
                      "ada_target": 0.6, "ada_interval": 1}),
], ids=["dcgan-fp16", "stylegan2-everything"])
def test_checkpoint_round_trip_restores_every_state_item(dataset, tmp_path, model, train):
    spec = job_spec("t", dataset, model=model, train={"steps": 4, "batch_size": 8, **train},
                    checkpoint={"every_steps": 4})
    rep = DirectoryReporter(tmp_path)
    loop = GanLoop(spec)
    loop.evaluations = [{"step": 2, "tag_acc": 0.5, "eval_settings": "x"}]
    loop.run(rep)
    ckpt = rep.checkpoints[-1]
    state = load_state(ckpt)
    for key in ["g", "d", "g_ema", "opt_g", "opt_d", "scaler_g", "scaler_d", "augment", "loss", "step", "kimg",
                "images_seen", "train_seconds", "stream", "spec", "world_size", "generator_config", "dataset_hash",
                "tags", "conditioning", "evaluations"]:
        assert key in state, key
    assert state["step"] == 4 and state["kimg"] == pytest.approx(0.032) and state["stream"]["consumed"] == 32
    assert state["opt_g"]["state"] and state["opt_d"]["state"]
    if train.get("precision") == "fp16":  # both scalers on, each with its scale and growth count
        for scaler in (state["scaler_g"], state["scaler_d"]):
            assert scaler["scale"] > 0 and 0 <= scaler["_growth_tracker"] < scaler["growth_interval"]
        assert state["augment"] is None
    else:  # fp32: scalers off; ADA adjusted p at the last step (ada_interval 1) and reset its statistic
        assert state["scaler_g"] == {} and state["scaler_d"] == {}
        aug = state["augment"]
        assert -1 <= aug["last_rt"] <= 1 and aug["stat_sum"] == 0 and aug["stat_count"] == 0
        moves = (1.0 - aug["p"]) / (8 * 1 / 500_000)  # p starts at 1; each step moves it by batch/(ada_kimg*1000)
        assert 0 <= round(moves) <= 4 and moves == pytest.approx(round(moves), abs=1e-6)
    assert state["spec"] == loop.spec.model_dump(mode="json") and json.loads(json.dumps(state["spec"]))
    rank = load_rank_state(ckpt, 0)
    assert set(rank) >= {"noise", "torch"}

    restored = GanLoop(spec)
    restored.restore(ckpt)
    _assert_same(state, {**restored.state(), "train_seconds": state["train_seconds"]})
    assert torch.equal(restored.noise.get_state(), rank["noise"]) and torch.equal(torch.get_rng_state(), rank["torch"])
    assert (ckpt / "grid.png").stat().st_size > 0
    g, info = generator_from_checkpoint(ckpt)
    torch.testing.assert_close(flat(g), flat(loop.g_ema))
    assert info["step"] == 4 and info["evaluation"]["tag_acc"] == 0.5
    assert info["conditioning"] == model.get("conditioning", "none")


def test_wrong_resolution_is_refused(dataset):
    with pytest.raises(ValueError, match="data.resolution=64.*16x16"):
        GanLoop(job_spec("t", dataset, data={"resolution": 64}, model=DCGAN, train={"steps": 12, "batch_size": 8},
                         checkpoint={"every_steps": 6}))


def test_accumulation_rounds_split_the_worker_batch_evenly():
    assert accumulation_rounds(32, None) == 1 and accumulation_rounds(32, 64) == 1
    assert accumulation_rounds(32, 8) == 4 and accumulation_rounds(12, 5) == 3 and accumulation_rounds(7, 2) == 7


def test_accumulated_micro_batches_give_the_full_batch_gradient():
    torch.manual_seed(0)
    g, d = build_models(ModelSpec(**COND_DCGAN), 16, c_dim=4)
    g.eval()  # BatchNorm on running stats: samples independent of each other, as accumulation assumes
    t = TrainSpec(dragan_lambda=0.0)
    real, z = torch.randn(8, 3, 16, 16), torch.randn(8, 16)
    c = (torch.rand(8, 4) > 0.5).float()

    def grads(rounds):
        d.zero_grad(set_to_none=True)
        loss = GanLoss(g, d, t, torch.Generator().manual_seed(0))
        for r in range(rounds):
            part = slice(r * 8 // rounds, (r + 1) * 8 // rounds)
            loss.accumulate_gradients("Dmain", real[part], c[part], z[part], c[part], 1 / rounds,
                                      lambda x: x.backward())
        return torch.cat([p.grad.flatten() for p in d.parameters()])

    torch.testing.assert_close(grads(1), grads(4), rtol=1e-4, atol=1e-6)


def test_accumulation_runs_in_rounds_of_the_max_micro_batch(dataset, tmp_path):
    loop = GanLoop(job_spec("t", dataset, model=STYLEGAN2, checkpoint={"every_steps": 2},
                            train={"steps": 2, "batch_size": 8, "max_batch_per_worker": 3}))
    assert loop.rounds == 4  # 8 per worker -> 4 rounds of 2 (3 does not divide 8)
    assert loop.run(DirectoryReporter(tmp_path))["step"] == 2


def test_tag_accuracy_is_evaluated_and_kept_with_the_checkpoint(dataset, tmp_path):
    spec = job_spec("t", dataset, model=COND_DCGAN, train={"steps": 4, "batch_size": 8}, checkpoint={"every_steps": 4},
                    eval={"metrics": ["tag_accuracy"], "every_steps": 2, "tag_samples": 32, "judge_epochs": 2})
    rep = DirectoryReporter(tmp_path)
    GanLoop(spec).run(rep)
    evals = [m for m in rep.metrics if "tag_acc" in m]
    assert [m["step"] for m in evals] == [2, 4]
    m = evals[-1]
    assert 0 <= m["tag_acc"] <= 1 and 0 <= m["tag_acc_false_pos"] <= 1 and 0 <= m["judge_real_acc"] <= 1
    assert any(k.startswith("tag_acc.") for k in m) and "held out" in m["eval_settings"]
    _, info = generator_from_checkpoint(rep.checkpoints[-1])
    assert info["evaluation"]["step"] == 4 and info["evaluation"]["tag_acc"] == m["tag_acc"]


def test_fid_without_weights_is_a_clear_error_at_start(dataset, monkeypatch):
    run = {"model": DCGAN, "train": {"steps": 12, "batch_size": 8}, "checkpoint": {"every_steps": 6}}
    spec = job_spec("t", dataset, **run, eval={"metrics": ["fid", "kid"]})
    monkeypatch.setenv("GANRAY_FID_WEIGHTS_URL", "http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(ValueError, match="eval.fid_weights nor GANRAY_FID_WEIGHTS.*downloaded them and failed"):
        GanLoop(spec)
    spec = job_spec("t", dataset, **run, eval={"metrics": ["fid"], "fid_weights": "/nonexistent/pt_inception.pth"})
    with pytest.raises(ValueError, match="no such file"):
        GanLoop(spec)


def test_a_new_world_size_keeps_the_global_batch_and_the_stream_position(dataset, tmp_path):
    spec = job_spec("t", dataset, model=COND_DCGAN, train={"steps": 4, "batch_size": 8}, checkpoint={"every_steps": 4})
    rep = DirectoryReporter(tmp_path)
    one = GanLoop(spec)
    one.run(rep)
    ranks = [GanLoop(spec, rank=r, world_size=2) for r in range(2)]
    for loop in ranks:
        loop.restore(rep.checkpoints[-1])  # no rank_1.pt: rank 1 gets fresh, deterministic noise
        assert loop.step == 4 and loop.batch == 8 and loop.local_batch == 4
        assert loop.stream.state_dict() == one.stream.state_dict()
        torch.testing.assert_close(flat(loop.g), flat(one.g), rtol=0, atol=0)
    assert not torch.equal(ranks[0].noise.get_state(), ranks[1].noise.get_state())
    with pytest.raises(ValueError, match="batch_size=8 does not divide by 3 workers"):
        GanLoop(job_spec("t", dataset, model=COND_DCGAN, train={"steps": 12, "batch_size": 8},
                         checkpoint={"every_steps": 6}), rank=0, world_size=3)


def test_the_sample_log_hook_records_the_keys_of_every_step(dataset, tmp_path, monkeypatch):
    from trainers.sample_log import open_sample_log

    monkeypatch.delenv("GANRAY_SAMPLE_LOG", raising=False)
    assert open_sample_log("t", 0) is None
    monkeypatch.setenv("GANRAY_SAMPLE_LOG", str(tmp_path / "log"))
    spec = job_spec("t", dataset, model=DCGAN, train={"steps": 3, "batch_size": 8}, checkpoint={"every_steps": 3})
    GanLoop(spec).run(DirectoryReporter(tmp_path / "ck"))
    (log,) = (tmp_path / "log").glob("t-rank0-*.jsonl")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["step"] for e in lines] == [1, 2, 3] and all(e["rank"] == 0 and len(e["keys"]) == 8 for e in lines)
    assert len({k for e in lines for k in e["keys"]}) == 24  # no sample twice within the epoch
