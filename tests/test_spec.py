import pytest

from orchestrator.spec import SpecError, load_spec, parse_spec

BASE = {"name": "anime-64", "data": {"url": "s3://data/anime64"}, "model": {"arch": "dcgan"}}


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


def test_digest_changes_with_any_field():
    a, b = parse_spec(BASE), parse_spec(BASE, ["train.steps=999"])
    assert a.digest() == parse_spec(BASE).digest() and a.digest() != b.digest()
