"""JobSpec fields of the trainer suite: architectures, conditioning, penalties, augmentation, eval."""
from functools import partial
from typing import get_args

import pytest
import torch

from conftest import ROOT
from orchestrator.job.spec_file import SpecError, load_spec
from specs import job_spec
from trainers.spec import ARCHES, CONDITIONAL_ARCHES, ModelSpec

spec = partial(job_spec, "x", "s3://d")  # spec(**sections): the sections under test on the smallest spec


def test_conditioning_defaults_to_tags_for_cond_dcgan_only():
    assert spec(model={"arch": "cond-dcgan"}).model.conditioning == "tags"
    assert spec(model={"arch": "stylegan2"}).model.conditioning == "none"
    assert spec(model={"arch": "stylegan2", "conditioning": "tags"}).model.conditional
    assert spec().to_dict()["model"]["conditioning"] == "none"


@pytest.mark.parametrize("model,message", [
    ({"arch": "dcgan", "conditioning": "tags"}, "dcgan is unconditional"),
    ({"arch": "cond-dcgan", "conditioning": "none"}, "cond-dcgan needs model.conditioning=tags"),
    ({"arch": "dcgan", "conditioning": "text"}, "dcgan is unconditional.*model.conditioning=text"),
    ({"arch": "stylegan2", "conditioning": "words"}, "model.conditioning"),
    ({"arch": "biggan"}, "model.arch.*cond-dcgan.*stylegan2"),
])
def test_model_errors_name_the_field(model, message):
    with pytest.raises(SpecError, match=message):
        spec(model=model)


def test_one_gradient_penalty_at_a_time_and_known_augment_ops():
    with pytest.raises(SpecError, match="choose one gradient penalty"):
        spec(train={"r1_gamma": 1.0, "dragan_lambda": 10.0})
    with pytest.raises(SpecError, match="train.augment_policy.*subset of color, translation, cutout"):
        spec(train={"augment": "diffaug", "augment_policy": "color,flip"})
    assert spec(train={"augment_policy": " color , cutout"}).train.augment_policy == "color,cutout"
    with pytest.raises(SpecError, match="train.ada_target"):
        spec(train={"ada_target": 1.5})


def test_eval_section():
    s = spec(model={"arch": "cond-dcgan"}, eval={"metrics": ["fid", "kid", "tag_accuracy"], "every_steps": 500,
                                                  "fid_weights": "/w/pt_inception.pth"})
    assert s.eval.metrics == ["fid", "kid", "tag_accuracy"] and s.eval.num_samples == 10000
    assert spec().eval.metrics == []  # nothing is evaluated unless asked
    with pytest.raises(SpecError, match="tag_accuracy but model.arch=dcgan is unconditional"):
        spec(eval={"metrics": ["tag_accuracy"]})
    with pytest.raises(SpecError, match="eval.metrics"):
        spec(eval={"metrics": ["inception_score"]})


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_validates_and_builds_its_networks(path):
    from trainers.networks import build_models

    s = load_spec(path)
    c_dim = 8 if s.model.conditional else 0
    g, d = build_models(s.model, s.data.resolution or 32, c_dim=c_dim)
    assert sum(p.numel() for p in g.parameters()) > 0 and sum(p.numel() for p in d.parameters()) > 0


@pytest.mark.parametrize("resolution", [8, 16, 24, 48, 64, 1024, 2048])
def test_the_spec_and_the_networks_share_one_resolution_rule(resolution):
    from trainers.networks import build_models

    valid = resolution in (16, 64, 1024)
    if valid:
        assert spec(data={"url": "s3://d", "resolution": resolution}).data.resolution == resolution
        if resolution <= 64:  # what the spec accepts, the networks build, at that size
            g, _ = build_models(spec(model={"arch": "dcgan", "z_dim": 8, "channels": 4}).model, resolution)
            assert tuple(g.eval()(torch.zeros(1, 8)).shape) == (1, 3, resolution, resolution)
    else:
        with pytest.raises(SpecError, match="data.resolution.*power of two from 16 to 1024"):
            spec(data={"url": "s3://d", "resolution": resolution})
        with pytest.raises(ValueError, match="power of two from 16 to 1024"):
            build_models(spec().model, resolution)


def test_architecture_names_are_defined_once():
    from trainers import networks

    assert get_args(ModelSpec.model_fields["arch"].annotation) == ARCHES
    assert set(CONDITIONAL_ARCHES) < set(ARCHES)
    for arch in ARCHES:  # every name the spec accepts, the networks build (they keep no list of their own)
        conditional = arch in CONDITIONAL_ARCHES
        model = spec(model={"arch": arch, "z_dim": 8, "channels": 4, "channels_max": 8,
                            "conditioning": "tags" if conditional else "none"}).model
        g, d = networks.build_models(model, 16, c_dim=4 if conditional else 0)
        assert g.config["arch"] == arch
    with pytest.raises(ValueError, match="unknown generator arch 'biggan'"):
        networks.build_generator({"arch": "biggan", "resolution": 16, "z_dim": 8})
    for arch in CONDITIONAL_ARCHES:
        assert spec(model={"arch": arch, "conditioning": "tags"}).model.conditional
    for arch in set(ARCHES) - set(CONDITIONAL_ARCHES):
        with pytest.raises(SpecError, match=f"{arch} is unconditional"):
            spec(model={"arch": arch, "conditioning": "tags"})
