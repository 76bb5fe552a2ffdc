"""Strict spec types, numbers as YAML writes them, and URLs: no credentials, known schemes only."""
from __future__ import annotations

import json

import pytest

from orchestrator.job.spec_file import SpecError, load_spec, parse_spec
from specs import spec_dict
from trainers.spec import JobSpec

BASE = spec_dict("strict", "s3://ganray/data/x")


def _error(raw=None, overrides=None) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(raw or BASE, overrides)
    return str(err.value)


@pytest.mark.parametrize("section,field,value", [
    ("train", "steps", "100"), ("train", "ema", "yes"), ("scaling", "workers", True), ("train", "lr_g", float("inf")),
    ("train", "lr_d", float("nan")), ("train", "batch_size", 64.0), ("train", "seed", False),
    ("train", "lr_g", "1e-4"), ("scaling", "cpus_per_worker", "2"), ("checkpoint", "keep", "3"),
    ("scaling", "workers", [1, True]), ("scaling", "workers", [1, 2, 3]), ("scaling", "workers", "2"),
    ("train", "max_batch_per_worker", "8"), ("eval", "every_steps", 1.5), ("model", "z_dim", "64"),
])
def test_ill_typed_values_are_errors_naming_the_field_and_the_value(section, field, value):
    raw = {**BASE, section: {**BASE.get(section, {}), field: value}}
    msg = _error(raw)
    assert f"{section}.{field}" in msg and repr(value) in msg, msg
    assert msg.count("\n") == 1, f"one line per bad field: {msg}"


def test_what_was_valid_stays_valid():
    spec = parse_spec({**BASE, "train": {"steps": 100, "lr_g": 1, "ema": False, "beta1": 0},
                       "scaling": {"workers": [1, 2], "cpus_per_worker": 2}})
    assert spec.scaling.workers == (1, 2) and spec.train.lr_g == 1.0 and isinstance(spec.train.lr_g, float)
    assert JobSpec.model_validate(json.loads(json.dumps(spec.to_dict()))) == spec  # what a worker gets


def test_unquoted_exponent_numbers_are_numbers_and_quoted_ones_strings(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("name: strict\ndata: {url: s3://ganray/data/x}\nmodel: {arch: dcgan}\n"
                 "train: {lr_g: 1e-4, lr_d: 2E-5, ema_kimg: 2E5, ada_kimg: -3.5e+2, steps: 10}\n")
    with pytest.raises(SpecError, match=r"train.ada_kimg.*-350\.0"):  # a number, refused by its bound
        load_spec(p)
    spec = load_spec(p, ["train.ada_kimg=3.5e+2", "train.r1_gamma=1e-2"])
    t = spec.train
    assert (t.lr_g, t.lr_d, t.ema_kimg, t.ada_kimg, t.r1_gamma) == (1e-4, 2e-5, 2e5, 350.0, 0.01)
    assert parse_spec(BASE, ["train.lr_g=1e-4"]).train.lr_g == 1e-4
    p.write_text("name: strict\ndata: {url: s3://ganray/data/x}\nmodel: {arch: dcgan}\ntrain: {lr_g: '1e-4'}\n")
    with pytest.raises(SpecError, match=r"train.lr_g.*'1e-4'"):
        load_spec(p)
    with pytest.raises(SpecError, match=r"train.lr_g.*'1e-4'"):
        parse_spec(BASE, ["train.lr_g='1e-4'"])
    p.write_text("name: strict\ndata: {url: s3://ganray/data/x}\nmodel: {arch: dcgan}\ntrain: {lr_g: .inf}\n")
    with pytest.raises(SpecError, match=r"train.lr_g.*inf"):
        load_spec(p)


SECRETS = ("AKIAEXAMPLE", "s3cr3tValue", "hunter2", "deadbeefsig", "AKIACRED")


@pytest.mark.parametrize("url", [
    "s3://AKIAEXAMPLE:s3cr3tValue@bucket/data",
    "https://user:hunter2@example.com/data",
    "https://user@example.com/data",
    "https://bucket.s3.amazonaws.com/data?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIACRED"
    "&X-Amz-Signature=deadbeefsig",
    "https://storage.example.com/data?Signature=deadbeefsig&Expires=1700000000",
    "https://account.blob.example.net/c/data?sv=2020&sig=deadbeefsig",
])
@pytest.mark.parametrize("field", ["data.url", "checkpoint.storage"])
def test_credentials_in_urls_are_refused_without_echoing_them(url, field):
    section, key = field.split(".")
    msg = _error({**BASE, section: {**BASE.get(section, {}), key: url}})
    assert field in msg and "credential" in msg and "***" in msg, msg
    assert not any(s in msg for s in SECRETS), msg


def test_credentials_in_an_override_are_not_echoed_either():
    msg = _error(overrides=["checkpoint.storage=s3://AKIAEXAMPLE:s3cr3tValue@bucket/ckpt"])
    assert "checkpoint.storage" in msg and "s3://***@bucket/ckpt" in msg and "s3cr3t" not in msg


@pytest.mark.parametrize("field", ["data.url", "checkpoint.storage"])
def test_an_unknown_scheme_lists_the_supported_ones(field):
    section, key = field.split(".")
    msg = _error({**BASE, section: {**BASE.get(section, {}), key: "s4://bucket/x"}})
    assert field in msg and "'s4'" in msg and "s3" in msg and "file" in msg and "gs" in msg, msg
    for ok in ("s3://b/x", "s3a://b/x", "file:///tmp/x", "/tmp/x", "relative/x", "gs://b/x", "memory://x"):
        parse_spec({**BASE, section: {**BASE.get(section, {}), key: ok}})


def test_a_yaml_error_quoting_a_credential_does_not_echo_it(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("name: strict\ndata: {url: s3://AKIAEXAMPLE:s3cr3tValue@bucket/x\nmodel: [dcgan\n")
    with pytest.raises(SpecError) as err:
        load_spec(p)
    assert "not valid YAML" in str(err.value) and "s3cr3t" not in str(err.value) and "AKIA" not in str(err.value)
