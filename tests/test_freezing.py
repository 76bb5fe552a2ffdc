"""train.freeze_d (FreezeD) and train.freeze_g_mapping: what they freeze, for the whole job and across a resume,
how the spec refuses what cannot work, and that they are part of the spec's digest."""
import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from orchestrator.job.runs import flatten
from orchestrator.job.spec_file import SpecError, parse_spec
from reporters import DirectoryReporter
from specs import COND_DCGAN, DCGAN, STYLEGAN2, job_spec, spec_dict
from trainers.loop import GanLoop
from trainers.networks import build_models
from trainers.spec import JobSpec, ModelSpec, discriminator_blocks, same_spec

pytestmark = pytest.mark.usefixtures("private_cache")
STYLEGAN2_TAGS = {**STYLEGAN2, "conditioning": "tags"}


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def names_in(module, parts):
    ids = {id(p) for part in parts for p in part.parameters()}
    return {n for n, p in module.named_parameters() if id(p) in ids}


def unchanged(module, before):
    return {n for n, p in module.named_parameters() if torch.equal(p.detach(), before[n])}


@pytest.mark.parametrize("arch", [DCGAN, COND_DCGAN, STYLEGAN2_TAGS], ids=lambda m: m["arch"])
def test_every_discriminator_has_one_block_per_halving(arch):
    for resolution in (16, 32):
        _, d = build_models(ModelSpec(**arch), resolution, c_dim=4)
        blocks = d.input_blocks()
        assert len(blocks) == discriminator_blocks(resolution) == {16: 2, 32: 3}[resolution]
        first = names_in(d, blocks[:1])
        assert any(n.endswith(("body.0.weight", "fromrgb.weight")) for n in first), first  # block 0 reads the image
        rest = set(dict(d.named_parameters())) - names_in(d, blocks)
        assert rest, "the head (or epilogue) is no block: it always trains"


@pytest.mark.parametrize("model,k", [(DCGAN, 0), (DCGAN, 1), (COND_DCGAN, 2)], ids=["dcgan-0", "dcgan-1", "cond-all"])
def test_freeze_d_keeps_the_first_blocks_bit_identical(dataset, tmp_path, model, k):
    loop = GanLoop(job_spec("t", dataset, model=model, checkpoint={"every_steps": 4},
                            train={"steps": 4, "batch_size": 8, "freeze_d": k, "report_every_s": 1e-6}))
    d0, g0 = snapshot(loop.d), snapshot(loop.g)
    rep = DirectoryReporter(tmp_path)
    loop.run(rep)
    frozen = names_in(loop.d, loop.d.input_blocks()[:k])
    assert len(frozen) == (4 * k if model is DCGAN else 6)  # a weight and a bias per conv; block 0 has two convs
    assert unchanged(loop.d, d0) == frozen  # the frozen blocks, and every other D parameter moved
    assert not unchanged(loop.g, g0)  # G trains as ever
    assert all(not p.requires_grad for n, p in loop.d.named_parameters() if n in frozen)
    trainable = sum(p.numel() for n, p in loop.d.named_parameters() if n not in frozen)
    assert sum(p.numel() for p in loop.opt_d.param_groups[0]["params"]) == trainable
    first = rep.metrics[0]
    assert first["frozen_blocks_d"] == k and first["trainable_params_d"] == trainable
    assert first["trainable_params_g"] == sum(p.numel() for p in loop.g.parameters())
    assert all("frozen_blocks_d" not in m for m in rep.metrics[1:])  # once per start


def test_stylegan2_fine_tune_freezes_d_and_the_mapping_across_a_resume(dataset, tmp_path):
    """FreezeD and a frozen mapping with every regulariser (lazy R1, path length) and ADA on 240 images: the frozen
    weights never move, in a straight run and one resumed from its middle checkpoint, which end alike."""
    train = {"steps": 4, "batch_size": 8, "freeze_d": 1, "freeze_g_mapping": True, "r1_gamma": 1.0, "r1_interval": 2,
             "pl_weight": 2.0, "pl_interval": 2, "augment": "diffaug", "augment_p": 0.0, "ada_target": 0.6,
             "ada_interval": 1, "ada_kimg": 1, "report_every_s": 1e-6}
    spec = job_spec("t", dataset, model=STYLEGAN2_TAGS, train=train, checkpoint={"every_steps": 2})
    straight = GanLoop(spec)
    d0, g0 = snapshot(straight.d), snapshot(straight.g)
    rep = DirectoryReporter(tmp_path / "a")
    straight.run(rep)
    frozen_d = names_in(straight.d, straight.d.input_blocks()[:1])
    frozen_g = {f"mapping.{n}" for n, _ in straight.g.mapping.layers.named_parameters(prefix="layers")}
    assert frozen_d and len(frozen_g) == 2 * STYLEGAN2["mapping_layers"]
    assert unchanged(straight.d, d0) == frozen_d and unchanged(straight.g, g0) == frozen_g  # the embed trains
    assert {"r1_penalty", "pl_penalty"} <= {k for m in rep.metrics for k in m}
    g_ema = dict(straight.g_ema.named_parameters())
    assert all(torch.equal(g_ema[n], g0[n]) for n in frozen_g)  # G_ema's mapping is G's frozen one
    # ADA: augment_p in every report, moved by at most batch / (ada_kimg * 1000) per step from its start
    assert all(0 <= m["augment_p"] <= m["step"] * 8 / 1000 and "ada_rt" in m for m in rep.metrics)

    assert all(not p.requires_grad for n, p in straight.d.named_parameters() if n in frozen_d)

    resumed = GanLoop(spec)
    resumed.restore(rep.checkpoints[0])
    assert resumed.step == 2
    assert all(not p.requires_grad for n, p in resumed.d.named_parameters() if n in frozen_d)
    resumed.run(DirectoryReporter(tmp_path / "b"))
    assert unchanged(resumed.d, d0) == frozen_d and unchanged(resumed.g, g0) == frozen_g
    for a, b in ((straight.g, resumed.g), (straight.d, resumed.d), (straight.g_ema, resumed.g_ema)):
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


TWO_RANKS = """
import json, os, torch, torch.distributed as dist
from reporters import DirectoryReporter
from trainers.loop import GanLoop
torch.set_num_threads(1)
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
loop = GanLoop(json.loads(os.environ["SPEC"]), rank, 2)
before = {n: p.detach().clone() for n, p in loop.d.named_parameters()}
loop.run(DirectoryReporter(os.environ["OUT"] + str(rank)))
torch.save({"before": before, "after": dict(loop.d.named_parameters())}, os.environ["OUT"] + f"{rank}.pt")
dist.destroy_process_group()
"""


def test_freeze_d_on_two_ranks_keeps_the_blocks_and_the_ranks_alike(dataset, tmp_path):
    """Data parallel (gloo, the loop's own gradient averaging): no rank has a gradient for a frozen block, so the
    all-reduce matches up and the frozen block stays bit-identical on both."""
    spec = job_spec("t", dataset, model=DCGAN, checkpoint={"every_steps": 2}, scaling={"workers": 2},
                    train={"steps": 2, "batch_size": 8, "freeze_d": 1, "r1_gamma": 1.0, "r1_interval": 1})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "SPEC": json.dumps(spec.to_dict()),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
           "OUT": str(tmp_path / "rank")}
    procs = [subprocess.Popen([sys.executable, "-c", TWO_RANKS], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r)}) for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    frozen = {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    for r in ranks:
        assert {n for n, p in r["after"].items() if torch.equal(p, r["before"][n])} == frozen
    assert all(torch.equal(ranks[0]["after"][n], ranks[1]["after"][n]) for n in ranks[0]["after"])


def test_path_length_works_through_a_frozen_unconditional_mapping(dataset, tmp_path):
    """Nothing before ws trains: the path length is still the gradient with respect to ws."""
    loop = GanLoop(job_spec("t", dataset, model=STYLEGAN2, checkpoint={"every_steps": 2},
                            train={"steps": 2, "batch_size": 8, "freeze_g_mapping": True, "pl_weight": 2.0,
                                   "pl_interval": 1, "report_every_s": 1e-6}))
    g0 = snapshot(loop.g)
    last = loop.run(DirectoryReporter(tmp_path))
    assert last["pl_penalty"] >= 0 and float(loop.loss.pl_mean) > 0
    assert unchanged(loop.g, g0) == {f"mapping.{n}" for n, _ in loop.g.mapping.named_parameters()}


def test_a_freeze_d_beyond_the_datasets_blocks_is_refused_at_model_build(dataset):
    with pytest.raises(ValueError, match=r"train.freeze_d=3 but D has 2 blocks at 16x16"):
        GanLoop(job_spec("t", dataset, model=DCGAN, train={"steps": 2, "batch_size": 8, "freeze_d": 3}))


BASE = spec_dict("anime-64", "s3://data/anime64", model={"arch": "stylegan2"})


def test_the_spec_refuses_what_cannot_be_frozen_naming_the_field():
    with pytest.raises(SpecError, match="train.freeze_d"):
        parse_spec(BASE, ["train.freeze_d=-1"])
    with pytest.raises(SpecError, match=r"train.freeze_d=4 but D has 3 blocks at 32x32"):
        parse_spec(BASE, ["data.resolution=32", "train.freeze_d=4"])
    assert parse_spec(BASE, ["data.resolution=32", "train.freeze_d=3"]).train.freeze_d == 3
    for arch in ("dcgan", "cond-dcgan"):
        with pytest.raises(SpecError, match=f"train.freeze_g_mapping is for model.arch=stylegan2.*{arch}"):
            parse_spec({**BASE, "model": {"arch": arch}}, ["train.freeze_g_mapping=true"])
    with pytest.raises(SpecError, match="train.freeze_g_mapping"):
        parse_spec(BASE, ['train.freeze_g_mapping="yes"'])


def test_both_fields_are_in_the_digest_and_the_params_and_a_spec_without_them_keeps_its_digest():
    base = parse_spec(BASE)
    # the digests of these specs before the fields existed (ganray at 6522988): unchanged
    assert JobSpec.model_validate(spec_dict("anime-64", "s3://data/anime64")).digest() == "940b130b0037563d"
    older = spec_dict("anime-64", "s3://data/anime64", model={"arch": "stylegan2"},
                      train={"steps": 500, "r1_gamma": 1.0})
    assert JobSpec.model_validate(older).digest() == "3b8fa366d949a960"
    assert parse_spec(BASE, ["train.freeze_d=0", "train.freeze_g_mapping=false"]).digest() == base.digest()
    one, two = parse_spec(BASE, ["train.freeze_d=1"]), parse_spec(BASE, ["train.freeze_d=2"])
    mapping = parse_spec(BASE, ["train.freeze_g_mapping=true"])
    assert len({base.digest(), one.digest(), two.digest(), mapping.digest()}) == 4
    stored = base.to_dict()
    del stored["train"]["freeze_d"], stored["train"]["freeze_g_mapping"]  # a spec.json written before them
    assert same_spec(stored, base) and not same_spec(copy.deepcopy(stored), one)
    params = flatten(one.to_dict())  # the job's MLflow params
    assert params["train.freeze_d"] == "1" and params["train.freeze_g_mapping"] == "False"
