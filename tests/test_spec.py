import copy
import hashlib
import json

import pytest

from orchestrator.job.spec_file import SpecError, load_spec, parse_spec
from specs import spec_dict
from trainers.spec import JobSpec, TrainSpec, same_spec

BASE = spec_dict("anime-64", "s3://data/anime64")


def test_minimal_spec_gets_cpu_defaults():
    spec = parse_spec(BASE)
    assert spec.scaling.gpus_per_worker == 0 and spec.scaling.cpus_per_worker == 1
    assert spec.train.precision == "fp32" and spec.registry.register == "last"
    assert spec.model_name == "anime-64"


def test_unknown_field_is_named_with_its_value():
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, "train": {"stepz": 5}})
    assert "train.stepz" in str(err.value) and "5" in str(err.value)


def test_ill_typed_field_is_named_with_its_value():
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, "train": {"steps": "many"}})
    assert "train.steps" in str(err.value) and "'many'" in str(err.value)


def test_missing_required_field_is_named():
    with pytest.raises(SpecError, match="model"):
        parse_spec({"name": "x", "data": {"url": "d"}})


def test_unknown_arch_lists_choices():
    with pytest.raises(SpecError, match="model.arch.*dcgan"):
        parse_spec({**BASE, "model": {"arch": "biggan"}})


def test_batch_must_divide_by_every_allowed_worker_count():
    parse_spec({**BASE, "train": {"batch_size": 12}, "scaling": {"workers": [2, 4]}})
    with pytest.raises(SpecError, match="batch_size=12 does not divide by scaling.workers=5"):
        parse_spec({**BASE, "train": {"batch_size": 12}, "scaling": {"workers": [4, 5]}})


def test_overrides_are_typed_and_validated():
    spec = parse_spec(BASE, ["train.steps=100", "scaling.workers=[1, 2]", "train.ema=false"])
    assert spec.train.steps == 100 and spec.scaling.workers == (1, 2) and spec.train.ema is False
    with pytest.raises(SpecError, match="train.steps"):
        parse_spec(BASE, ["train.steps=-3"])
    with pytest.raises(SpecError, match="FIELD=VALUE"):
        parse_spec(BASE, ["train.steps"])


def test_bad_name_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="name"):
        parse_spec({**BASE, "name": "Has Spaces"})
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(p)
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


# The digest is taken over a stylegan2 spec, where every model field may change.
DIGEST_BASE = {**BASE, "model": {"arch": "stylegan2"}}
# Values tried in turn for a field until one validates and differs from the field's default.
ALTERNATIVES = {bool: lambda v: [not v], int: lambda v: [v + 1, v * 2], float: lambda v: [v / 2, 0.5, 0.1],
                type(None): lambda v: [16, 0.5, "x", "fid", "src@champion"], list: lambda v: [["fid"]],
                str: lambda v: [v + "x", "dcgan", "color", "hinge", "bf16", "diffaug", "none", "tags", "sentence"]}


def leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def changed(path, value):
    """A spec whose one field at path holds another valid value, or None when no alternative validates."""
    for alt in ALTERNATIVES[type(value)](value):
        try:
            spec = parse_spec(DIGEST_BASE, [f"{path}={json.dumps(alt)}"])
        except SpecError:
            continue
        if dict(leaves(spec.to_dict()))[path] != value:
            return spec
    return None


def test_digest_changes_with_any_field():
    base = parse_spec(DIGEST_BASE)
    assert base.digest() == parse_spec(DIGEST_BASE).digest() and len(base.digest()) == 16
    untried = []
    for path, value in leaves(base.to_dict()):
        other = changed(path, value)
        if other is None:
            untried.append(path)
            continue
        assert other.digest() != base.digest(), path
    # model.text_encoder: ganray knows one encoder, so the field has no other valid value yet
    assert set(untried) <= {"model.text_encoder"}, f"add an alternative value for {untried} to ALTERNATIVES"


def test_a_field_written_at_its_default_hashes_as_if_left_out():
    base = parse_spec(DIGEST_BASE)
    for path, value in leaves(base.to_dict()):
        written = parse_spec(DIGEST_BASE, [f"{path}={json.dumps(value)}"])
        assert written.digest() == base.digest(), path
    cond = parse_spec({**BASE, "model": {"arch": "cond-dcgan"}})  # its conditioning default comes from the arch
    assert cond.digest() == parse_spec({**BASE, "model": {"arch": "cond-dcgan", "conditioning": "tags"}}).digest()


def _full_hash(spec):
    """The digest as it was before: every field, defaults included."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


class NewerTrainSpec(TrainSpec):
    warmup_kimg: float = 0.0  # a field a later version adds, with a default


class NewerJobSpec(JobSpec):
    train: NewerTrainSpec = NewerTrainSpec()


def test_adding_a_field_with_a_default_keeps_every_digest():
    for raw in (BASE, {**BASE, "train": {"steps": 999, "r1_gamma": 1.0}}):
        today, newer = JobSpec.model_validate(raw), NewerJobSpec.model_validate(raw)
        assert "warmup_kimg" in newer.to_dict()["train"] and "warmup_kimg" not in today.to_dict()["train"]
        assert newer.digest() == today.digest()
        assert _full_hash(newer) != _full_hash(today)  # the old scheme would have called it a changed spec
    moved = NewerJobSpec.model_validate({**BASE, "train": {"warmup_kimg": 5.0}})
    assert moved.digest() != parse_spec(BASE).digest()


def test_same_spec_reads_a_stored_spec_under_todays_model():
    spec = parse_spec(BASE, ["train.steps=500"])
    stored = spec.to_dict()  # what an earlier run's spec.json holds: every field written out
    assert same_spec(stored, spec) and _full_hash(spec) != spec.digest()  # recorded under the old digest scheme
    older = copy.deepcopy(stored)
    del older["train"]["style_mixing"], older["eval"]  # written before these fields existed
    assert same_spec(older, spec)
    other = copy.deepcopy(stored)
    other["train"]["steps"] = 501
    assert not same_spec(other, spec)
    removed = copy.deepcopy(stored)
    removed["train"]["a_field_since_removed"] = 1
    assert not same_spec(removed, spec) and not same_spec({"name": "x"}, spec)
