"""Checkpoints are verified before they are trusted and loaded safely (in-process, real files; the Ray
Train path, where two ranks agree on a fallback, is the last test)."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from reporters import DirectoryReporter
from specs import TINY_DCGAN, job_spec
from trainers.checkpoints.format import (STATE_FILE, CheckpointError, generator_from_checkpoint, index_file,
                                        load_state, rank_file, verify)
from trainers.loop import GanLoop
from trainers.checkpoints.resume import resume


def train(spec, root: Path, world: int = 1) -> list[Path]:
    """Runs every rank of a world (in this process, no process group) into one checkpoint folder per step,
    as Ray Train merges each rank's files; returns the folders, oldest first."""
    reporter = None
    for rank in range(world):
        reporter = DirectoryReporter(root)
        GanLoop(spec, rank, world).run(reporter)
    return reporter.checkpoints


def skipped(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is skipped" in r.getMessage()]


def test_a_truncated_state_is_skipped_and_the_newest_older_checkpoint_restored(dataset, tmp_path, caplog):
    spec = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 12, "batch_size": 4},
                    checkpoint={"every_steps": 4})
    c4, c8, c12 = train(spec, tmp_path / "run")
    data = (c12 / STATE_FILE).read_bytes()
    (c12 / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{c12}.*state.pt"):
        GanLoop(spec).restore(c12)  # today: torch's own error, at every retry
    loop = GanLoop(spec)
    with caplog.at_level(logging.WARNING, logger="ganray.resume"):
        choice = resume(loop, pafs.LocalFileSystem(), str(c12))
    assert choice.stored.step == 8 and loop.step == 8 and loop.images_seen == 32
    assert choice.generation == 1  # what it writes from now on never lands in checkpoint_000000012's folder
    assert len(skipped(caplog)) == 1 and str(c12) in skipped(caplog)[0] and "state.pt" in skipped(caplog)[0]
    assert loop.run(DirectoryReporter(tmp_path / "again"))["step"] == 12


def test_a_missing_rank_file_is_skipped_by_every_rank_alike(dataset, tmp_path, caplog):
    spec = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 8, "batch_size": 4},
                    checkpoint={"every_steps": 4})
    c4, c8 = train(spec, tmp_path / "run", world=2)
    assert {p.name for p in c8.iterdir()} >= {rank_file(0), rank_file(1), index_file(0), index_file(1)}
    (c8 / rank_file(1)).unlink()
    with pytest.raises(CheckpointError, match=f"{c8}.*rank_1.pt"):
        GanLoop(spec, 1, 2).restore(c8)  # today: rank 1 silently reseeds
    for rank in range(2):
        loop = GanLoop(spec, rank, 2)
        with caplog.at_level(logging.WARNING, logger="ganray.resume"):
            choice = resume(loop, pafs.LocalFileSystem(), str(c8))
        assert choice.stored.step == 4 and loop.step == 4, rank
        saved = torch.load(c4 / rank_file(rank), weights_only=True)
        assert torch.equal(loop.noise.get_state(), saved["noise"])  # its own RNG, not a reseed
    assert all(str(c8) in m and "rank_1.pt" in m for m in skipped(caplog)) and len(skipped(caplog)) == 2


def test_an_index_that_is_missing_or_wrong_fails_verification(dataset, tmp_path):
    spec = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                    checkpoint={"every_steps": 4})
    (c4,) = train(spec, tmp_path / "run", world=2)
    assert verify(c4)["world_size"] == 2 and verify(c4)["spec"] == spec.to_dict()
    cases = {"index_rank_1.json is missing": lambda d: (d / index_file(1)).unlink(),
             "index_rank_0.json is missing": lambda d: (d / index_file(0)).unlink(),
             "grid.png does not match its sha256": lambda d: (d / "grid.png").write_bytes(
                 bytes(b ^ 1 for b in (d / "grid.png").read_bytes())),
             "rank_0.pt has": lambda d: (d / rank_file(0)).write_bytes((d / rank_file(0)).read_bytes() + b"x"),
             "index_rank_0.json is unreadable": lambda d: (d / index_file(0)).write_text("{")}
    for i, (reason, damage) in enumerate(cases.items()):
        d = tmp_path / f"case{i}"
        shutil.copytree(c4, d)
        damage(d)
        with pytest.raises(CheckpointError, match=reason):
            verify(d)


def test_a_checkpoint_from_before_indexes_loads_as_before(dataset, tmp_path):
    spec = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                    checkpoint={"every_steps": 4})
    (c4,) = train(spec, tmp_path / "run")
    for index in c4.glob("index_rank_*.json"):
        index.unlink()
    assert verify(c4) is None
    loop = GanLoop(spec)
    choice = resume(loop, pafs.LocalFileSystem(), str(c4))
    assert choice.stored.step == 4 and loop.step == 4 and choice.skipped == [] and choice.generation == 0
    (c4 / rank_file(0)).unlink()
    with pytest.raises(CheckpointError, match="no checkpoint of .* verifies.*rank_0.pt missing"):
        resume(GanLoop(spec), pafs.LocalFileSystem(), str(c4))


def test_everything_the_loop_stores_loads_with_weights_only(dataset, tmp_path):
    spec = job_spec("safety", dataset, model=TINY_DCGAN, checkpoint={"every_steps": 2},
                    train={"steps": 2, "batch_size": 4, "augment": "diffaug", "ada_target": 0.6, "ada_interval": 1})
    loop = GanLoop(spec)
    loop.run(DirectoryReporter(tmp_path / "run"))
    loop.evaluations.append({"step": 2, "fid": np.float64(12.5), "per_tag": np.float32(0.25), "n": np.int64(3),
                             "hist": np.arange(3)})  # what a metric might hand back
    loop.write_checkpoint(tmp_path)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    ev = state["evaluations"][-1]
    assert (ev["fid"], ev["per_tag"], ev["n"]) == (12.5, 0.25, 3) and type(ev["fid"]) is float
    assert torch.equal(ev["hist"], torch.arange(3))
    assert torch.load(tmp_path / rank_file(0), weights_only=True)["noise"].dtype == torch.uint8


class _Planted:
    """What an attacker pickles: loading it runs a command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(directory: Path, marker: Path, with_index: bool) -> Path:
    directory.mkdir(parents=True)
    torch.save({"g": _Planted(marker), "step": 1, "world_size": 1, "generator_config": {}}, directory / STATE_FILE)
    torch.save({"noise": _Planted(marker)}, directory / rank_file(0))
    (directory / "grid.png").write_bytes(b"png")
    if with_index:  # an attacker can write a matching index too: hashes prove integrity, not safety
        from trainers.checkpoints.format import write_index
        write_index(directory, 0, 1, 1)
    return directory


@pytest.mark.parametrize("with_index", [False, True], ids=["legacy", "indexed"])
def test_a_planted_pickle_runs_nothing_through_restore_resume_or_the_generator(dataset, tmp_path, with_index):
    marker = tmp_path / "MARKER"
    ckpt = _plant(tmp_path / "run" / "checkpoint_000000001", marker, with_index)
    spec = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 12, "batch_size": 4},
                    checkpoint={"every_steps": 4})
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors.*posix.system.*could run code"):
        GanLoop(spec).restore(ckpt)
    with pytest.raises(CheckpointError, match=r"checkpoint_000000001.*could run code"):
        resume(GanLoop(spec), pafs.LocalFileSystem(), str(ckpt))
    with pytest.raises(CheckpointError, match="could run code"):
        generator_from_checkpoint(ckpt)  # what the driver's finish registers
    with pytest.raises(CheckpointError, match="could run code"):
        load_state(ckpt)
    assert not marker.exists()


def test_a_checkpoint_of_another_spec_is_refused_naming_the_fields(dataset, tmp_path):
    stored = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4},
                      checkpoint={"every_steps": 4})
    changed = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 4, "batch_size": 4, "lr_g": 1e-3},
                       checkpoint={"every_steps": 4})
    (c4,) = train(stored, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"different spec \(train.lr_g: 0.0002 -> 0.001\).*--fresh"):
        resume(GanLoop(changed), pafs.LocalFileSystem(), str(c4))
    json.loads((c4 / index_file(0)).read_text())  # the index holds the spec, readable without torch


def test_on_s3_the_fallback_reads_through_ray_trains_filesystem(stack, dataset, tmp_path, caplog):
    """What a worker does with the pyarrow S3 filesystem Ray Train hands it: list, download, verify, restore."""
    from orchestrator.cluster.endpoints import applied, resolve_endpoints
    from trainers.checkpoints.storage import resolve_storage
    from trainers.data.storage import open_filesystem

    spec = job_spec("safety", dataset, model=TINY_DCGAN, train={"steps": 8, "batch_size": 4},
                    checkpoint={"every_steps": 4})
    c4, c8 = train(spec, tmp_path / "run")
    data = (c8 / STATE_FILE).read_bytes()
    (c8 / STATE_FILE).write_bytes(data[:-10])
    endpoints = resolve_endpoints()
    with applied(endpoints):
        fs, root = open_filesystem("s3://ganray/safety-s3/run")
        fs.put(f"{tmp_path / 'run'}/", f"{root}/", recursive=True)
        storage = resolve_storage("s3://ganray/safety-s3", None, endpoints.s3_endpoint)
        loop = GanLoop(spec)
        with caplog.at_level(logging.WARNING, logger="ganray.resume"):
            choice = resume(loop, storage.filesystem, f"{storage.path}/run/{c8.name}")
    assert choice.stored.step == 4 and loop.step == 4 and choice.generation == 1
    assert len(skipped(caplog)) == 1 and c8.name in skipped(caplog)[0] and "state.pt" in skipped(caplog)[0]


FALL_BACK_UNDER_RAY = """
import json, os, sys
from pathlib import Path
from orchestrator.cluster.endpoints import use_cluster_environment
use_cluster_environment()  # before Ray is imported: it reads its auth settings once
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from orchestrator.job.ray_runtime import NAMESPACE, control_actor, ray_init
from trainers.checkpoints.format import STATE_FILE
from trainers.loop import GanLoop
from trainers.ray_worker import train_worker
from trainers.spec import JobSpec

spec, storage = JobSpec.model_validate(json.loads(os.environ["SPEC"])), Path(os.environ["STORAGE"])
name = spec.name
ray_init(os.environ["RAY_ADDRESS"])

def fit(control_name):
    return TorchTrainer(
        train_worker, train_loop_config={"spec": spec.to_dict(), "control": {"name": control_name, "namespace": NAMESPACE}},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=str(storage), checkpoint_config=CheckpointConfig(num_to_keep=5),
                             failure_config=FailureConfig(max_failures=0))).fit()

control_name, control = control_actor(name)
ray.get(control.request_stop.remote())
first = fit(control_name)  # stopped at once: one checkpoint, Ray's latest
latest = Path(first.checkpoint.path)
older = storage / name / "checkpoint_000000000"  # an older one that verifies, as two ranks write it
older.mkdir()
for rank in range(2):
    GanLoop(spec, rank, 2).write_checkpoint(older)
data = (latest / STATE_FILE).read_bytes()
(latest / STATE_FILE).write_bytes(data[:100])
control_name, _ = control_actor(name)  # a new control actor: no stop this time
second = fit(control_name)
print(json.dumps({"first_error": str(first.error) if first.error else None, "latest": str(latest),
                  "second_error": str(second.error) if second.error else None,
                  "end": second.checkpoint.path if second.checkpoint else None}))
"""


@pytest.mark.ray
def test_under_ray_train_both_ranks_fall_back_together_and_write_beside_the_skipped(stack, ganray_home, dataset,
                                                                                    tmp_path):
    """Two Ray Train workers: Ray's latest checkpoint has a truncated state; both ranks resume from the
    older one that verifies, train to the end, and write their checkpoints under new folder names.
    (A driver process of its own, as `ganray run` is: Ray reads its auth settings once per process.)"""
    import json
    import subprocess
    import sys

    from conftest import ROOT, cli_env
    from trainers.checkpoints.layout import checkpoint_step

    name, storage = "safety-ray", tmp_path / "storage"
    spec = job_spec(name, dataset, model=TINY_DCGAN, train={"steps": 12, "batch_size": 4},
                    checkpoint={"every_steps": 4}, scaling={"workers": 2})
    proc = subprocess.run([sys.executable, "-c", FALL_BACK_UNDER_RAY], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**cli_env(ganray_home), "SPEC": json.dumps(spec.to_dict()),
                                            "STORAGE": str(storage)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    latest = Path(out["latest"])
    assert out["first_error"] is None and checkpoint_step(out["latest"]) < 12
    assert out["second_error"] is None, out["second_error"]
    end = Path(out["end"])
    assert end.name == "checkpoint_000000012-1" and verify(end)["world_size"] == 2
    assert load_state(end)["step"] == 12 and load_state(end)["images_seen"] == 48  # 12 steps from step 0
    names = sorted(p.name for p in (storage / name).iterdir() if p.name.startswith("checkpoint_0"))
    assert names == ["checkpoint_000000000", latest.name, "checkpoint_000000004-1", "checkpoint_000000008-1",
                     "checkpoint_000000012-1"]
    assert (latest / STATE_FILE).stat().st_size == 100  # the skipped one is left as it was
