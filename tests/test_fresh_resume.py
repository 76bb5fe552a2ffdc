"""Resume compares the spec of stored checkpoints, and --fresh is exact: the driver's own functions against
the real MLflow server of the stack, with checkpoints in a local folder (no Ray)."""
from __future__ import annotations

import json
import shutil

import pytest

from orchestrator import tracking_server

from orchestrator.job import runs
from orchestrator.job.driver import JobError, _final_checkpoint, _open_job
from orchestrator.job.lifecycle import State
from reporters import DirectoryReporter
from specs import TINY_DCGAN, job_spec
from trainers.checkpoints.format import index_file
from trainers.checkpoints.storage import resolve_storage
from trainers.loop import GanLoop

SNAPSHOT = "checkpoint_manager_snapshot.json"


def write_checkpoints(spec, run_folder, legacy: bool = False):
    """Checkpoints of spec in run_folder as the workers write them, and Ray Train's record of them."""
    rep = DirectoryReporter(run_folder)
    GanLoop(spec).run(rep)
    if legacy:  # written before checkpoints had indexes
        for c in rep.checkpoints:
            (c / index_file(0)).unlink()
    (run_folder / SNAPSHOT).write_text("{}")
    return rep.checkpoints


def test_no_run_on_record_but_checkpoints_of_another_spec_are_refused_unless_fresh(stack, tracking_uri, dataset,
                                                                                   tmp_path):
    c = tracking_server.client(tracking_uri)
    storage_dir = tmp_path / "storage"
    old = job_spec("fresh-norun", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                   checkpoint={"every_steps": 2, "storage": str(storage_dir)})
    run_folder = storage_dir / "fresh-norun"
    write_checkpoints(old, run_folder)
    (run_folder / "notes.txt").write_text("mine")  # not the job's: stays through --fresh
    new = job_spec("fresh-norun", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4, "lr_g": 1e-3},
                   checkpoint={"every_steps": 2, "storage": str(storage_dir)})
    storage = resolve_storage(new.checkpoint.storage, None, None)
    with pytest.raises(JobError, match=r"checkpoint_000000004: .*train.lr_g: 0.0002 -> 0.001.*--fresh"):
        _open_job(c, new, storage, fresh=False)  # today: a new run, and Ray restores the old checkpoint
    assert runs.find_run(c, "fresh-norun") is None  # the refusal changed nothing
    assert sorted(p.name for p in run_folder.iterdir()) == [
        "checkpoint_000000002", "checkpoint_000000004", SNAPSHOT, "notes.txt"]
    run, life = _open_job(c, old, storage, fresh=False)  # the same spec resumes them
    assert life.state is State.CREATED and run.data.tags[runs.STORAGE_TAG] == str(run_folder)


def test_a_legacy_checkpoint_is_compared_too_and_fresh_deletes_only_the_jobs_checkpoints(stack, tracking_uri,
                                                                                        dataset, tmp_path):
    c = tracking_server.client(tracking_uri)
    storage_dir = tmp_path / "storage"
    old = job_spec("fresh-legacy", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                   checkpoint={"every_steps": 2, "storage": str(storage_dir)})
    run_folder = storage_dir / "fresh-legacy"
    write_checkpoints(old, run_folder, legacy=True)
    (run_folder / "notes.txt").write_text("mine")
    (run_folder / "checkpoints-of-mine").mkdir()
    neighbour = write_checkpoints(old, storage_dir / "another-job")
    new = job_spec("fresh-legacy", dataset, model=TINY_DCGAN, train={"steps": 6, "batch_size": 4},
                   checkpoint={"every_steps": 2, "storage": str(storage_dir)})
    storage = resolve_storage(new.checkpoint.storage, None, None)
    with pytest.raises(JobError, match=r"train.steps: 4 -> 6"):
        _open_job(c, new, storage, fresh=False)
    run, life = _open_job(c, new, storage, fresh=True)
    assert sorted(p.name for p in run_folder.iterdir()) == ["checkpoints-of-mine", "notes.txt"]
    assert all(p.exists() for p in neighbour) and (storage_dir / "another-job" / SNAPSHOT).exists()
    assert life.state is State.CREATED and run.data.tags[runs.DIGEST_TAG] == new.digest()


def test_fresh_deletes_the_checkpoints_the_old_run_recorded_and_starts_at_step_0(stack, tracking_uri, dataset,
                                                                               tmp_path):
    c = tracking_server.client(tracking_uri)
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    old = job_spec("fresh-moved", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                   checkpoint={"every_steps": 2, "storage": str(first_dir)})
    old_storage = resolve_storage(old.checkpoint.storage, None, None)
    run, life = _open_job(c, old, old_storage, fresh=False)
    ckpts = write_checkpoints(old, first_dir / "fresh-moved")
    (first_dir / "fresh-moved" / "notes.txt").write_text("mine")
    kept = first_dir / "fresh-moved" / "evaluated" / ckpts[0].name  # an evaluated checkpoint's kept copy
    shutil.copytree(ckpts[0], kept)
    sibling = write_checkpoints(old, first_dir / "other-job")
    for to in (State.STARTING, State.RUNNING):
        life.move(to)
    c.set_tag(run.info.run_id, runs.CHECKPOINT_TAG, str(ckpts[-1]))  # what the controller records at the end
    c.set_tag(run.info.run_id, runs.CHECKPOINT_STEP_TAG, "4")
    assert _final_checkpoint(c.get_run(run.info.run_id), old) == str(ckpts[-1])

    new = job_spec("fresh-moved", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                   checkpoint={"every_steps": 2, "storage": str(second_dir)})  # the same job, now writing elsewhere
    stale = write_checkpoints(old, second_dir / "fresh-moved")  # checkpoints of the name there too
    new_run, new_life = _open_job(c, new, resolve_storage(new.checkpoint.storage, None, None), fresh=True)
    assert new_run.info.run_id != run.info.run_id and new_life.state is State.CREATED
    assert _final_checkpoint(new_run, new) is None  # step 0, whatever the tracking server remembers
    assert runs.find_run(c, "fresh-moved").info.run_id == new_run.info.run_id
    old_tags = c.get_run(run.info.run_id).data.tags
    assert old_tags[runs.STATE_TAG] == "superseded" and "#superseded" in old_tags[runs.JOB_TAG]
    assert not any(p.exists() for p in ckpts + stale + [kept])
    assert sorted(p.name for p in (first_dir / "fresh-moved").iterdir()) == ["notes.txt"]
    assert not (second_dir / "fresh-moved").exists()  # nothing else was there: the folder went too
    assert all(p.exists() for p in sibling)  # another job's checkpoints beside it are untouched
    assert json.loads((first_dir / "other-job" / SNAPSHOT).read_text()) == {}


def test_on_s3_the_stored_spec_is_read_and_fresh_deletes_only_the_jobs_checkpoints(stack, tracking_uri, dataset,
                                                                                  tmp_path):
    from trainers.data.storage import open_filesystem

    c = tracking_server.client(tracking_uri)
    url = "s3://ganray/fresh-s3"
    old = job_spec("fresh-s3", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                   checkpoint={"every_steps": 2, "storage": url})
    local = tmp_path / "run"
    write_checkpoints(old, local)
    (local / "notes.txt").write_text("mine")
    fs, root = open_filesystem(f"{url}/fresh-s3")
    fs.put(f"{local}/", f"{root}/", recursive=True)
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(root)} >= {"checkpoint_000000004", "notes.txt", SNAPSHOT}
    new = job_spec("fresh-s3", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4, "lr_g": 1e-3},
                   checkpoint={"every_steps": 2, "storage": url})
    storage = resolve_storage(url, None, None)
    with pytest.raises(JobError, match=r"s3?.*checkpoint_000000004: .*train.lr_g: 0.0002 -> 0.001"):
        _open_job(c, new, storage, fresh=False)
    run, life = _open_job(c, new, storage, fresh=True)
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(root)] == ["notes.txt"] and life.state is State.CREATED
