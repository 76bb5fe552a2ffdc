"""``model.init_from`` in-process: the source grammar, the architecture check, and the weights a fine-tune
starts from (tag rows copied by name, new tags fresh, the rest of the state the new job's own)."""
from __future__ import annotations

import csv

import pytest
import torch

from specs import COND_DCGAN, DCGAN, STYLEGAN2, job_spec, spec_dict
from trainers.checkpoints.format import CheckpointError
from trainers.errors import UsageError
from trainers.init_from import InitSource, architecture_changes, parse_source
from trainers.loop import GanLoop
from trainers.model_ref import ModelRef
from trainers.networks import build_models
from trainers.spec import JobSpec, ModelSpec
from trainers.warm_start import TAG_AXES, carry_tags, warm_start

RENAMED = {"pink hair": "magenta hair", "hat": "crown"}  # two tags the source never saw; two it had are gone


@pytest.mark.parametrize("text, source", [
    ("faces@champion", InitSource(model=ModelRef("faces", alias="champion"))),
    ("models:/faces/3", InitSource(model=ModelRef("faces", version=3))),
    ("models:/faces@_x", InitSource(model=ModelRef("faces", alias="_x"))),
    ("job:e2e", InitSource(job="e2e")),
])
def test_a_source_is_a_registered_version_or_a_finished_job(text, source):
    assert parse_source(text) == source and str(parse_source(text)) == text.removeprefix("models:/")


@pytest.mark.parametrize("text, says", [
    ("faces", "ambiguous"), ("models:/faces", "ambiguous"), ("job:", "job name ''"), ("job:Big", "job name 'Big'"),
    ("faces@latest", "reserved"), ("faces/0", "whole number"), ("faces@a@b", "more than one"), ("", "empty"),
])
def test_a_bad_source_is_refused_naming_what_is_wrong(text, says):
    with pytest.raises(UsageError, match=says):
        parse_source(text)
    with pytest.raises(ValueError, match=says):  # the spec says the same, under its field
        job_spec("j", "/data", model={**DCGAN, "init_from": text})


def test_init_from_is_in_the_digest_and_a_spec_without_it_keeps_its_digest():
    plain = job_spec("j", "/data", model=DCGAN)
    assert JobSpec.model_validate(spec_dict("j", "/data", model={**DCGAN, "init_from": None})).digest() == \
        plain.digest()
    assert job_spec("j", "/data", model={**DCGAN, "init_from": "faces@champion"}).digest() != plain.digest()


@pytest.mark.parametrize("arch, model", [("cond-dcgan", COND_DCGAN), ("stylegan2", {**STYLEGAN2,
                                                                                    "conditioning": "tags"})])
def test_every_parameter_that_grows_with_the_vocabulary_is_in_the_tag_table(arch, model):
    spec = ModelSpec.model_validate(model)
    (g5, d5), (g7, d7) = build_models(spec, 16, 5), build_models(spec, 16, 7)
    for net, small, big in (("g", g5, g7), ("d", d5, d7)):
        grown = {k: next(i for i, (a, b) in enumerate(zip(v.shape, big.state_dict()[k].shape)) if a != b)
                 for k, v in small.state_dict().items() if v.shape != big.state_dict()[k].shape}
        assert grown and grown == TAG_AXES[(arch, net)], (net, grown)


def test_architecture_fields_that_differ_are_named_each():
    source = {"arch": "cond-dcgan", "z_dim": 16, "channels": 8, "channels_max": 512, "embed_dim": 8,
              "conditioning": "tags", "resolution": 16}
    assert architecture_changes(source, dict(source)) == []
    changed = {**source, "z_dim": 32, "embed_dim": 4, "resolution": 32}
    assert architecture_changes(source, changed) == ["model.z_dim: 16 -> 32", "model.embed_dim: 8 -> 4",
                                                     "resolution: 16 -> 32"]
    text = {**source, "conditioning": "text", "text_encoder": "a", "text_pooling": "phrases"}
    assert architecture_changes(text, {**text, "text_pooling": "sentence"}) == \
        ["model.text_pooling: 'phrases' -> 'sentence'"]
    assert "model.arch: 'cond-dcgan' -> 'dcgan'" in architecture_changes(source, {**source, "arch": "dcgan"})


def test_carried_tags_are_counted_by_name():
    assert carry_tags(["a", "b", "c"], ["b", "c", "d", "e"]).metrics() == \
        {"init_tags_copied": 2, "init_tags_new": 2, "init_tags_dropped": 1}


@pytest.fixture(scope="module")
def renamed_dataset(faces, tmp_path_factory):
    """The session's faces with two tags renamed (new to a model trained on faces), ingested on their own."""
    from trainers.data.ingest.local import ingest

    root = tmp_path_factory.mktemp("renamed")
    labels = root / "labels.csv"
    rows = list(csv.reader(open(faces / "labels.csv")))
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(rows[0])
        for name, tags in rows[1:]:
            writer.writerow([name, ", ".join(RENAMED.get(t.strip(), t.strip()) for t in tags.split(","))])
    ingest(faces, str(root / "data"), labels, shard_mb=0.05)
    return str(root / "data")


def _trained_source(dataset, tmp_path, model, steps=2):
    loop = GanLoop(job_spec("src", dataset, model=model, train={"steps": steps, "batch_size": 8, "seed": 1}))
    for _ in range(steps):
        train_one_step(loop)
    (tmp_path / "src").mkdir()
    loop.write_checkpoint(tmp_path / "src")
    return loop


def train_one_step(loop):
    from trainers.data.stream.shard_stream import batches
    from trainers.grid import from_uint8

    images, samples = next(batches(loop.stream, loop.local_batch))
    return loop.train_step(from_uint8(images), samples if loop.cond is not None else None)


@pytest.mark.parametrize("model", [COND_DCGAN, {**STYLEGAN2, "conditioning": "tags"}], ids=["cond-dcgan", "stylegan2"])
def test_a_fine_tune_copies_shared_tag_rows_by_name_and_keeps_fresh_rows_for_new_tags(
        dataset, renamed_dataset, tmp_path, model):
    source = _trained_source(dataset, tmp_path, model)
    target = GanLoop(job_spec("tune", renamed_dataset, model={**model, "init_from": "src/1"},
                              train={"steps": 4, "batch_size": 8, "seed": 2}))
    fresh = {net: {k: v.clone() for k, v in m.state_dict().items()} for net, m in (("g", target.g), ("d", target.d))}
    carry = warm_start(target, str(tmp_path / "src"))
    assert (carry.copied, carry.new, carry.dropped) == (len(source.tags.vocabulary) - 2, 2, 2)
    old, new = source.tags.vocabulary, target.tags.vocabulary
    assert {"crown", "magenta hair"} <= set(new) and not {"crown", "magenta hair"} & set(old)
    for net, src, dst in (("g", source.g, target.g), ("d", source.d, target.d), ("g", source.g_ema, target.g_ema)):
        s, t, axes = src.state_dict(), dst.state_dict(), TAG_AXES[(model["arch"], net)]
        for key, axis in axes.items():
            for i, tag in enumerate(new):  # shared tags: the source's row; new ones: the row the job drew itself
                want = s[key].select(axis, old.index(tag)) if tag in old else fresh[net][key].select(axis, i)
                assert torch.equal(t[key].select(axis, i), want), (net, key, tag)
        others = [k for k in s if k not in axes]
        assert others and all(torch.equal(s[k], t[k]) for k in others)
    assert target.step == 0 and not target.opt_g.state and not target.opt_d.state


def test_an_unconditional_fine_tune_carries_every_weight_and_trains_on(dataset, tmp_path):
    source = _trained_source(dataset, tmp_path, DCGAN)
    target = GanLoop(job_spec("tune", dataset, model={**DCGAN, "init_from": "job:src"},
                              train={"steps": 3, "batch_size": 8}))
    assert warm_start(target, str(tmp_path / "src")).metrics() == \
        {"init_tags_copied": 0, "init_tags_new": 0, "init_tags_dropped": 0}
    assert all(torch.equal(a, b) for a, b in zip(source.g.state_dict().values(), target.g.state_dict().values()))
    stats = train_one_step(target)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())


@pytest.mark.parametrize("change, named", [({"z_dim": 32}, "model.z_dim: 16 -> 32"),
                                            ({"channels": 4}, "model.channels: 8 -> 4"),
                                            ({"arch": "cond-dcgan", "embed_dim": 8}, "model.arch: 'dcgan'")])
def test_a_source_with_other_architecture_fields_is_refused_naming_them(dataset, tmp_path, change, named):
    _trained_source(dataset, tmp_path, DCGAN, steps=1)
    target = GanLoop(job_spec("tune", dataset, model={**DCGAN, **change, "init_from": "job:src"},
                              train={"steps": 2, "batch_size": 8}))
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(")):
        warm_start(target, str(tmp_path / "src"))


def test_a_damaged_source_checkpoint_is_refused_before_any_weight_loads(dataset, tmp_path):
    _trained_source(dataset, tmp_path, DCGAN, steps=1)
    state = tmp_path / "src" / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    target = GanLoop(job_spec("tune", dataset, model={**DCGAN, "init_from": "job:src"},
                              train={"steps": 2, "batch_size": 8}))
    before = {k: v.clone() for k, v in target.g.state_dict().items()}
    with pytest.raises(CheckpointError, match="state.pt"):
        warm_start(target, str(tmp_path / "src"))
    assert all(torch.equal(before[k], v) for k, v in target.g.state_dict().items())


# -- the driver's half, against the real MLflow server -------------------------------------------------

@pytest.fixture(scope="module")
def two_versions(stack, tracking_uri, dataset, tmp_path_factory):
    """Model ft-src with two versions, each registered (registry.register: last) by a job of its own."""
    from orchestrator import tracking_server
    from orchestrator.job import runs
    from orchestrator.registry.registrar import register_finished
    from reporters import DirectoryReporter
    from trainers.checkpoints.format import generator_from_checkpoint

    storage = tmp_path_factory.mktemp("ft-ckpt")
    client = tracking_server.client(tracking_uri)
    for i, name in enumerate(("ft-a", "ft-b")):
        spec = job_spec(name, dataset, model=COND_DCGAN, train={"steps": 2, "batch_size": 8, "seed": i,
                                                                 "report_every_s": 1000.0},
                        checkpoint={"every_steps": 2, "keep": 1, "storage": str(storage)},
                        registry={"model_name": "ft-src"})
        reporter = DirectoryReporter(storage / name)
        GanLoop(spec).run(reporter)
        run_id = runs.create_run(client, spec.to_dict(), spec.digest(), f"{storage}/{name}")
        g, info = generator_from_checkpoint(str(reporter.checkpoints[-1]))
        assert register_finished(client, spec, run_id, str(reporter.checkpoints[-1]), g, info) == i + 1
    return client


def test_a_version_that_is_not_the_newest_resolves_to_its_own_kept_checkpoint(two_versions, renamed_dataset):
    from orchestrator.job.init_source import resolve

    client = two_versions
    v1, v2 = (client.get_model_version("ft-src", v) for v in ("1", "2"))
    lineage = resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "ft-src/1"}), 16)
    assert lineage == {"init_from.model": "ft-src", "init_from.version": "1", "init_from.run_id": v1.run_id,
                       "init_from.checkpoint": v1.tags["checkpoint_uri"]}
    assert "/evaluated/" in v1.tags["checkpoint_uri"] and v1.tags["checkpoint_uri"] != v2.tags["checkpoint_uri"]
    client.set_registered_model_alias("ft-src", "gold", "1")
    via_alias = resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "ft-src@gold"}),
                        16)
    assert via_alias == lineage


def test_a_source_that_does_not_fit_or_is_gone_is_refused_before_anything_starts(two_versions, renamed_dataset,
                                                                                  tmp_path):
    import shutil

    from orchestrator.job.init_source import InitSourceError, resolve

    client = two_versions
    with pytest.raises(InitSourceError, match=r"model.z_dim: 16 -> 32.*model.channels: 8 -> 4"):
        resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "z_dim": 32, "channels": 4,
                                                                 "init_from": "ft-src/2"}), 16)
    with pytest.raises(InitSourceError, match="resolution: 16 -> 32"):
        resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "ft-src/2"}), 32)
    with pytest.raises(InitSourceError, match=r"has no version 7 \(versions: 1, 2"):
        resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "ft-src/7"}), 16)
    with pytest.raises(InitSourceError, match="names this job itself"):
        resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "job:tune"}), 16)
    with pytest.raises(InitSourceError, match="no job 'nope'"):
        resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "job:nope"}), 16)
    from orchestrator.job import runs

    unfinished = job_spec("ft-unfinished", renamed_dataset, model=COND_DCGAN)
    runs.create_run(client, unfinished.to_dict(), unfinished.digest(), str(tmp_path / "ft-unfinished"))
    with pytest.raises(InitSourceError, match="the job is created; a fine-tune starts from a finished job"):
        resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "job:ft-unfinished"}), 16)
    # a version whose checkpoint left (as one registered before copies were kept): named, with what to do
    kept = client.get_model_version("ft-src", "2").tags["checkpoint_uri"]
    shutil.move(kept, tmp_path / "away")
    try:
        with pytest.raises(InitSourceError, match=f"{kept} is gone"):
            resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "ft-src/2"}), 16)
    finally:
        shutil.move(tmp_path / "away", kept)


@pytest.mark.ray
def test_ganray_run_fine_tunes_a_version_that_is_not_the_newest_on_tags_it_never_saw(
        two_versions, renamed_dataset, ganray_home, tmp_path):
    """One Ray fit: the driver resolves ft-src/1 (version 2 is newer), the worker starts from its kept
    checkpoint, the first report counts the tags, and the job's version records where it came from."""
    import json

    from conftest import ganray
    from specs import write_spec

    client = two_versions
    source = client.get_model_version("ft-src", "1")
    spec = write_spec(tmp_path / "tune.yaml", "ft-tune", renamed_dataset, model={**COND_DCGAN, "init_from": "ft-src/1"},
                      train={"steps": 4, "batch_size": 8, "report_every_s": 0.5}, scaling={"workers": 1},
                      checkpoint={"every_steps": 4, "keep": 1})
    summary = json.loads(ganray(ganray_home, "run", str(spec), "--quiet").stdout)
    assert summary["state"] == "finished" and summary["steps"] == 4
    run = client.get_run(summary["run_id"])
    lineage = {"init_from.model": "ft-src", "init_from.version": "1", "init_from.run_id": source.run_id,
               "init_from.checkpoint": source.tags["checkpoint_uri"]}
    assert {k: run.data.params.get(k) for k in lineage} == lineage
    first = {k: int(run.data.metrics[k]) for k in ("init_tags_copied", "init_tags_new", "init_tags_dropped")}
    vocabulary = len(GanLoop(job_spec("v", renamed_dataset, model=COND_DCGAN)).tags.vocabulary)
    assert first == {"init_tags_copied": vocabulary - 2, "init_tags_new": 2, "init_tags_dropped": 2}
    tags = client.get_model_version("ft-tune", str(summary["version"])).tags
    assert {k: tags.get(k) for k in lineage} == lineage and not any(k.startswith("lineage.") for k in tags)
    shown = json.loads(ganray(ganray_home, "models", "show", f"ft-tune/{summary['version']}", "--json").stdout)
    assert shown["init_from"] == {k.removeprefix("init_from."): v for k, v in lineage.items()}
    assert json.loads(ganray(ganray_home, "run", str(spec), "--quiet").stdout) == summary  # finished: as it was
    from orchestrator.job.init_source import resolve  # the finished job is a source in its turn

    assert resolve(client, job_spec("next", renamed_dataset, model={**COND_DCGAN, "init_from": "job:ft-tune"}), 16) \
        == {"init_from.job": "ft-tune", "init_from.run_id": summary["run_id"],
            "init_from.checkpoint": summary["checkpoint_uri"]}


def test_deleting_a_version_deletes_its_checkpoint_copy_and_refuses_a_held_one(two_versions, renamed_dataset):
    from pathlib import Path

    from orchestrator.job.init_source import InitSourceError, resolve
    from orchestrator.registry.deletion import VersionDeleteError, delete_version

    client = two_versions
    client.set_registered_model_alias("ft-src", "keep", "2")
    with pytest.raises(VersionDeleteError, match="holds the alias.*keep"):
        delete_version(client, ModelRef("ft-src", alias="keep"))
    client.delete_registered_model_alias("ft-src", "gold")
    kept = Path(client.get_model_version("ft-src", "1").tags["checkpoint_uri"])
    done = delete_version(client, ModelRef("ft-src", version=1))
    assert done["checkpoint_deleted"] and not kept.exists() and kept.parent.exists()
    assert [v.version for v in client.search_model_versions("name='ft-src'")] == ["2"]
    with pytest.raises(InitSourceError, match="has no version 1"):
        resolve(client, job_spec("tune", renamed_dataset, model={**COND_DCGAN, "init_from": "ft-src/1"}), 16)
