"""Stored checkpoints have one owner (``trainers/checkpoints/``): one listing, one stored-spec reader and one
deletion for every filesystem, and one spec-difference message for every refusal of a changed spec.

Real checkpoints from ``GanLoop``, a local folder and the stack's real S3 server (moto on loopback), the
stack's MLflow for the driver's and the submission's refusals; no Ray.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator import tracking_server
from orchestrator.cluster.endpoints import applied, resolve_endpoints
from orchestrator.cluster.submission import SubmitRefused, _changed_spec
from orchestrator.job import runs
from orchestrator.job.driver import JobError, _check_same_spec, _open_job
from reporters import DirectoryReporter
from specs import TINY_DCGAN, job_spec
from trainers.checkpoints.deletion import delete_job_checkpoints
from trainers.checkpoints.format import CheckpointError, index_file
from trainers.checkpoints.layout import KEPT_FOLDER, RAY_RUN_FILES
from trainers.checkpoints.listing import list_checkpoints
from trainers.checkpoints.resume import resume
from trainers.checkpoints.storage import open_storage, resolve_storage
from trainers.checkpoints.stored_spec import newest_spec, read_spec
from trainers.data.storage import open_filesystem
from trainers.loop import GanLoop
from trainers.spec import spec_changes, spec_difference

NOT_THE_JOBS = ["checkpoint_000000009", "checkpoints-of-mine", "notes.txt"]  # a file named like a checkpoint too


@pytest.fixture(scope="module")
def job_folder(dataset, tmp_path_factory):
    """A job's storage folder as runs leave it: checkpoints 2 and 4, a generation-1 checkpoint 4 (written after
    a fallback), checkpoint 1 from before indexes, a kept copy under evaluated/, Ray Train's files, and three
    entries that are not the job's."""
    root = tmp_path_factory.mktemp("job") / "stored"
    spec = job_spec("stored", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                    checkpoint={"every_steps": 2, "storage": str(root.parent)})
    rep = DirectoryReporter(root)
    GanLoop(spec).run(rep)
    shutil.copytree(root / "checkpoint_000000004", root / "checkpoint_000000004-1")
    shutil.copytree(root / "checkpoint_000000002", root / "checkpoint_000000001")
    (root / "checkpoint_000000001" / index_file(0)).unlink()
    shutil.copytree(root / "checkpoint_000000002", root / KEPT_FOLDER / "checkpoint_000000002")
    for name in RAY_RUN_FILES:
        (root / name).write_text("{}")
    (root / "notes.txt").write_text("mine")
    (root / "checkpoint_000000009").write_text("a file, not a checkpoint")
    (root / "checkpoints-of-mine").mkdir()
    (root / "checkpoints-of-mine" / "x.txt").write_text("mine")
    return spec, root


def _places(local: Path, s3_job_url: str, endpoints) -> dict[str, tuple]:
    """The same job folder as the driver sees it locally and on S3, and as a worker does (Ray Train's own
    pyarrow S3 filesystem, built by resolve_storage)."""
    fs, root = open_filesystem(s3_job_url)
    fs.put(f"{local}/", f"{root}/", recursive=True)
    storage_url, name = s3_job_url.rsplit("/", 1)
    ray = resolve_storage(storage_url, None, endpoints.s3_endpoint)
    return {"local": open_storage(str(local)), "s3": open_storage(s3_job_url),
            "ray": (ray.filesystem, f"{ray.path}/{name}")}


def test_the_one_listing_and_spec_reader_answer_alike_on_a_local_folder_and_on_s3(stack, job_folder, tmp_path):
    spec, template = job_folder
    local = tmp_path / "stored"
    shutil.copytree(template, local)
    endpoints = resolve_endpoints()
    with applied(endpoints):  # the worker's filesystem reads its keys from the environment, as on a cluster
        places = _places(local, "s3://ganray/listing/stored", endpoints)
        listed = {k: [(s.step, s.generation, s.path.rsplit("/", 1)[-1]) for s in list_checkpoints(*place)]
                  for k, place in places.items()}
        specs = {k: [read_spec(place[0], s.path) for s in list_checkpoints(*place)] for k, place in places.items()}
        newest = {k: newest_spec(*place) for k, place in places.items()}
    assert listed["local"] == [(4, 1, "checkpoint_000000004-1"), (4, 0, "checkpoint_000000004"),
                               (2, 0, "checkpoint_000000002"), (1, 0, "checkpoint_000000001")]
    assert listed["s3"] == listed["local"] and listed["ray"] == listed["local"]
    assert all(s == [spec.to_dict()] * 4 for s in specs.values()), specs  # checkpoint 1's from its state.pt
    assert {k: (path.rsplit("/", 1)[-1], found) for k, (path, found) in newest.items()} == {
        k: ("checkpoint_000000004-1", spec.to_dict()) for k in places}
    empty = {k: list_checkpoints(place[0], f"{place[1]}/no-such-job") for k, place in places.items()}
    assert empty == {"local": [], "s3": [], "ray": []}


def test_an_unreadable_stored_spec_is_named_and_the_next_newest_is_read(job_folder, tmp_path):
    spec, template = job_folder
    local = tmp_path / "stored"
    shutil.copytree(template, local)
    (local / "checkpoint_000000004-1" / index_file(0)).write_text("{")
    fs, path = open_storage(str(local))
    with pytest.raises(CheckpointError, match=r"checkpoint_000000004-1: index_rank_0.json is unreadable"):
        read_spec(fs, f"{path}/checkpoint_000000004-1")
    assert newest_spec(fs, path) == (f"{path}/checkpoint_000000004", spec.to_dict())


def test_fresh_deletes_the_same_entries_locally_and_on_s3(stack, job_folder, tmp_path):
    _, template = job_folder
    local = tmp_path / "stored"
    shutil.copytree(template, local)
    endpoints = resolve_endpoints()
    with applied(endpoints):
        places = _places(local, "s3://ganray/deleting/stored", endpoints)
        gone = {k: sorted(p[len(places[k][1]) + 1:] for p in delete_job_checkpoints(*places[k]))
                for k in ("local", "s3")}
    assert gone["local"] == gone["s3"] == sorted(
        [".validate_storage_marker", "checkpoint_000000001", "checkpoint_000000002", "checkpoint_000000004",
         "checkpoint_000000004-1", "checkpoint_manager_snapshot.json", f"{KEPT_FOLDER}/checkpoint_000000002"])
    fs, root = open_filesystem("s3://ganray/deleting/stored")
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root)) == NOT_THE_JOBS
    assert sorted(p.name for p in local.iterdir()) == NOT_THE_JOBS  # evaluated/ went with its last copy
    assert (local / "checkpoints-of-mine" / "x.txt").read_text() == "mine"


def _detail(message: str) -> str:
    """The parenthesised list of changed fields in a refusal."""
    return re.search(r"different spec \((.*)\); ", message).group(1)


def test_every_refusal_of_a_changed_spec_names_the_changes_in_one_text(stack, tracking_uri, dataset, tmp_path):
    client = tracking_server.client(tracking_uri)
    storage_dir = tmp_path / "storage"
    old = job_spec("one-diff", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                   checkpoint={"every_steps": 2, "storage": str(storage_dir)})
    new = job_spec("one-diff", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4, "augment": "diffaug"},
                   scaling={"workers": [1, 2]}, checkpoint={"every_steps": 2, "storage": str(storage_dir)})
    expected = 'scaling.workers: 1 -> [1, 2], train.augment: "none" -> "diffaug"'  # JSON: lists, quoted strings
    assert spec_difference(old.to_dict(), new) == expected
    ckpts = DirectoryReporter(storage_dir / "one-diff")
    GanLoop(old).run(ckpts)
    with applied(resolve_endpoints()):  # MLflow's artifact reads (the run's spec.json) follow the environment
        with pytest.raises(CheckpointError) as by_resume:  # the workers' own check
            resume(GanLoop(new), pafs.LocalFileSystem(), str(ckpts.checkpoints[-1]))
        with pytest.raises(JobError) as by_stored:  # the driver, with no run on record
            _open_job(client, new, resolve_storage(new.checkpoint.storage, None, None), fresh=False)
        run_id = runs.create_run(client, old.to_dict(), old.digest(), str(storage_dir / "one-diff"))
        with pytest.raises(JobError) as by_run:  # the driver, against the job's MLflow run
            _check_same_spec(client, client.get_run(run_id), new)
        with pytest.raises(SubmitRefused) as by_submit:  # `ganray submit`, before anything reaches the cluster
            _changed_spec(client, new, replace=False)
    messages = [str(e.value) for e in (by_resume, by_stored, by_run, by_submit)]
    assert [_detail(m) for m in messages] == [expected] * 4, messages
    assert "checkpoint_000000004 was written under a different spec" in messages[0] and "--fresh" in messages[0]
    assert messages[1].startswith(f"{ckpts.checkpoints[-1]}: job 'one-diff' already exists")
    assert "--fresh" in messages[1] and "--fresh" in messages[2] and "--replace" in messages[3]


def test_the_difference_names_unset_fields_and_at_most_eight(dataset):
    spec = job_spec("many", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                    checkpoint={"every_steps": 2, "storage": "/s"})
    stored = spec.to_dict()
    del stored["train"]["seed"]  # a field added since
    stored["train"]["old_knob"] = [1, "a"]  # one removed since
    stored["train"].update(lr_g=0.5, lr_d=0.25, beta1=0.75, beta2=0.125, r1_gamma=2.0, aux_weight=0.5, loss="hinge")
    changes = spec_changes(stored, spec)
    assert len(changes) == 9 and changes[-1] == "train.seed: (unset) -> 0"
    assert 'train.old_knob: [1, "a"] -> (unset)' in changes and 'train.loss: "hinge" -> "ns"' in changes
    assert spec_difference(stored, spec) == ", ".join(changes[:8])
    assert spec_difference(None, spec) == "stored spec unavailable" and spec_changes(spec.to_dict(), spec) == []
