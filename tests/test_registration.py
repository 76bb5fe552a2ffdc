"""Registration: ``registry.register: best | every | last | none`` against the real MLflow server.

In-process, real checkpoints come from ``GanLoop`` and every report goes through the real controller
callback while a ``ControllerLike`` reporter rotates checkpoints as Ray Train does with ``keep: 1``;
the driver's registrar runs beside the loop as it does beside Ray Train. One Ray fit, through
``ganray run``, shows versions registered during the run, ``candidate`` on the newest and the best
checkpoint kept in storage.
"""
from __future__ import annotations

import json
import math
import re
import shutil

import mlflow
import numpy as np
import pytest

from conftest import ganray
from deploy.loader import load_named
from orchestrator import tracking_server
from orchestrator.job import runs
from orchestrator.controller.evaluated import ENTRY_TAG, evaluated_entries
from orchestrator.registry.registrar import Registrar, qualifying, register_finished
from orchestrator.job.spec_file import SpecError, parse_spec
from reporters import DirectoryReporter
from specs import TINY_COND_DCGAN, job_spec, spec_dict, write_spec
from trainers.checkpoints.layout import KEPT_FOLDER
from trainers.model_ref import parse_ref

EVAL = {"metrics": ["tag_accuracy"], "every_steps": 2, "tag_samples": 32, "judge_epochs": 1}


# -- the spec ------------------------------------------------------------------------------------------

BASE = spec_dict("r", "d", model={"arch": "cond-dcgan"})


@pytest.mark.parametrize("registry_,eval_,message", [
    ({"register": "best"}, {"metrics": ["tag_accuracy"]}, "registry.register=best needs registry.best_by"),
    ({"register": "best", "best_by": "fid"}, {"metrics": ["tag_accuracy"]},
     r"registry.best_by=fid is not measured: add it to eval.metrics \(now \['tag_accuracy'\]\)"),
    ({"register": "best", "best_by": "psnr"}, {"metrics": ["tag_accuracy"]}, "registry.best_by"),
    ({"register": "every"}, {}, "registry.register=every registers evaluated checkpoints, but eval.metrics is empty"),
    ({"register": "best", "best_by": "tag_accuracy"}, {"metrics": ["tag_accuracy"], "every_steps": 1500},
     "eval.every_steps=1500 must be a multiple of checkpoint.every_steps=1000"),
    ({"register": "sometimes"}, {}, "registry.register"),
])
def test_the_spec_refuses_a_registry_that_cannot_work(registry_, eval_, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, "registry": registry_, "eval": eval_})


def test_best_by_takes_either_name_of_tag_accuracy_and_the_digest_of_old_specs_is_unchanged():
    for typed in ("tag_accuracy", "tag_acc"):
        spec = parse_spec({**BASE, "registry": {"register": "best", "best_by": typed},
                           "eval": {"metrics": ["tag_accuracy"], "every_steps": 2000}})
        assert spec.registry.best_by == "tag_accuracy" and spec.registry.evaluated
    plain = parse_spec(BASE)
    assert plain.registry.register == "last" and plain.registry.best_by is None and not plain.registry.evaluated
    unused = parse_spec({**BASE, "registry": {"register": "last", "best_by": "fid"}})  # kept for a later best
    assert unused.registry.best_by == "fid" and unused.digest() != plain.digest()
    assert plain.digest() == parse_spec({**BASE, "registry": {"register": "last"}}).digest()
    assert plain.digest() != parse_spec({**BASE, "registry": {"register": "none"}}).digest()


def test_best_registers_each_evaluation_that_beats_every_earlier_one():
    def entries(metric, values):
        return [{"uri": f"u/evaluated/checkpoint_{i:09d}", "step": i, "metrics": {} if v is None else {metric: v}}
                for i, v in enumerate(values, 1)]

    def steps(spec, es):
        return [e["step"] for e in qualifying(es, spec)]

    fid = parse_spec({**BASE, "registry": {"register": "best", "best_by": "fid"},
                      "eval": {"metrics": ["fid"], "every_steps": 1000}})
    acc = parse_spec({**BASE, "registry": {"register": "best", "best_by": "tag_acc"},
                      "eval": {"metrics": ["tag_accuracy"], "every_steps": 1000}})
    every = parse_spec({**BASE, "registry": {"register": "every"}, "eval": {"metrics": ["fid"]}})
    # lower FID is better; a tie, a NaN and a missing value never beat the best so far
    assert steps(fid, entries("fid", [40.0, 35.0, 35.0, 50.0, float("nan"), None, 20.0])) == [1, 2, 7]
    # higher tag accuracy is better (reported as tag_acc)
    assert steps(acc, entries("tag_acc", [float("nan"), 0.5, 0.4, 0.7, 0.7, 0.9])) == [2, 4, 6]
    assert steps(every, entries("fid", [40.0, 50.0, None])) == [1, 2, 3]


def test_entries_are_read_oldest_first_across_a_resume_that_fell_back():
    def tag(step, gen, acc):
        name = f"checkpoint_{step:09d}" + (f"-{gen}" if gen else "")
        return f"{ENTRY_TAG}{name}", json.dumps({"uri": f"s3://b/j/{KEPT_FOLDER}/{name}", "step": step,
                                                 "generation": gen, "metrics": {"tag_acc": acc}})

    tags = dict([tag(4, 1, 0.95), tag(2, 0, 0.5), tag(4, 0, 0.9), tag(2, 1, 0.6)])
    tags["ganray.state"] = "running"
    entries = evaluated_entries(tags)
    assert [(e["generation"], e["step"]) for e in entries] == [(0, 2), (0, 4), (1, 2), (1, 4)]
    acc = parse_spec({**BASE, "registry": {"register": "best", "best_by": "tag_accuracy"},
                      "eval": {"metrics": ["tag_accuracy"], "every_steps": 1000}})
    assert [e["uri"].rsplit("/", 1)[1] for e in qualifying(entries, acc)] == [
        "checkpoint_000000002", "checkpoint_000000004", "checkpoint_000000004-1"]


# -- in-process: the real callback, the real registrar, the real MLflow server ---------------------------

class ControllerLike(DirectoryReporter):
    """Hands every report to the real Ray Train controller callback, then rotates checkpoints as Ray Train
    does with ``checkpoint.keep: 1`` (only the latest stays)."""

    def __init__(self, root, callback):
        super().__init__(root)
        self.callback = callback

    def report(self, metrics, checkpoint_dir, name) -> None:
        import pyarrow.fs as pafs
        from ray.train import Checkpoint

        super().report(metrics, checkpoint_dir, name)
        ckpt = Checkpoint(str(self.checkpoints[-1]), pafs.LocalFileSystem()) if checkpoint_dir else None
        self.callback.after_report(None, [dict(metrics)], ckpt)
        if checkpoint_dir:
            for old in self.checkpoints[:-1]:
                shutil.rmtree(old, ignore_errors=True)


def _train_registering(tracking_uri, spec, storage):
    """A real run of spec in-process with the registrar beside it; returns (client, run id, reporter)."""
    from orchestrator.controller.report_callback import MlflowReportCallback
    from trainers.loop import GanLoop

    c = tracking_server.client(tracking_uri)
    run_id = runs.create_run(c, spec.to_dict(), spec.digest(), f"{storage}/{spec.name}")
    reporter = ControllerLike(storage / spec.name,
                              MlflowReportCallback(tracking_uri, run_id, str(storage), spec.registry.evaluated))
    with Registrar(tracking_server.client(tracking_uri), spec, run_id, every_s=0.2):
        GanLoop(spec).run(reporter)
    return c, run_id, reporter


def _evaluated(reporter) -> list[tuple[int, float]]:
    return [(int(m["step"]), m["tag_acc"]) for m in reporter.metrics if "eval_settings" in m]


def _versions(c, name):
    return {int(v.version): v for v in c.search_model_versions(f"name='{name}'")}


def test_best_registers_the_improving_checkpoints_from_kept_copies_and_keeps_the_best(
        stack, tracking_uri, dataset, tmp_path, private_cache):
    storage = tmp_path / "ckpt"
    spec = job_spec("reg-best", dataset, model=TINY_COND_DCGAN,
                    train={"steps": 8, "batch_size": 8, "report_every_s": 1000.0},
                    checkpoint={"every_steps": 2, "keep": 1, "storage": str(storage)},
                    registry={"register": "best", "best_by": "tag_accuracy"}, eval=EVAL)
    c, run_id, reporter = _train_registering(tracking_uri, spec, storage)

    evaluated = _evaluated(reporter)
    assert [s for s, _ in evaluated] == [2, 4, 6, 8]
    expected, best = [], -math.inf  # by hand: each evaluation above every earlier one
    for step, acc in evaluated:
        if acc > best:
            expected.append(step)
            best = acc
    registered = _versions(c, "reg-best")
    by_step = {int(v.tags["step"]): v for v in registered.values()}
    assert sorted(by_step) == expected and len(registered) == len(expected)
    newest = registered[max(registered)]
    assert int(newest.tags["step"]) == expected[-1]
    assert int(c.get_model_version_by_alias("reg-best", "candidate").version) == int(newest.version)
    for step, acc in evaluated:
        if step in by_step:
            tags = by_step[step].tags
            assert float(tags["metric.tag_acc"]) == pytest.approx(acc, rel=1e-5)
            assert float(tags["kimg"]) == pytest.approx(step * 8 / 1000)
            assert "held out" in tags["eval_settings"] and tags["eval_step"] == str(step)
            assert tags["spec_digest"] == spec.digest() and tags["run_id"] == run_id
            assert tags["dataset_hash"] and tags["code_revision"] == runs.code_revision()
            assert any(k.startswith("metric.tag_acc.") for k in tags)  # per-tag numbers too

    # Ray's rotation kept only the last checkpoint; the copy behind every registered version is kept (in the
    # run's own folder), the copies of the evaluations that did not qualify went.
    job = storage / spec.name
    assert sorted(p.name for p in job.glob("checkpoint_*")) == ["checkpoint_000000008"]
    kept = sorted(p.name for p in (job / KEPT_FOLDER / run_id).iterdir())
    assert kept == [f"checkpoint_{s:09d}" for s in expected] and sorted((job / KEPT_FOLDER).iterdir()) == \
        [job / KEPT_FOLDER / run_id]
    for step, version in by_step.items():
        assert version.tags["checkpoint_uri"] == str(job / KEPT_FOLDER / run_id / f"checkpoint_{step:09d}")
        assert (job / KEPT_FOLDER / run_id / f"checkpoint_{step:09d}" / "state.pt").exists()

    # the run records each evaluated checkpoint; a rerun of registration registers nothing twice
    recorded = sorted(k for k in c.get_run(run_id).data.tags if k.startswith(ENTRY_TAG))
    assert recorded == [f"{ENTRY_TAG}checkpoint_{s:09d}" for s in (2, 4, 6, 8)]
    assert Registrar(c, spec, run_id).process() == sorted(registered)
    ckpt = str(job / "checkpoint_000000008")
    assert register_finished(c, spec, run_id, ckpt, None, {}) == max(registered)
    assert len(_versions(c, "reg-best")) == len(registered)

    # a version loads with mlflow.pytorch.load_model, and through the registry's loader with its metadata
    mlflow.set_tracking_uri(tracking_uri)
    g = mlflow.pytorch.load_model("models:/reg-best@candidate", map_location="cpu")
    loaded = load_named(c, parse_ref("reg-best@candidate"))
    meta = loaded.meta
    assert loaded.version == max(registered) and loaded.alias == "candidate"
    z = np.zeros((2, meta.z_dim + meta.c_dim), dtype=np.float32)
    import torch

    assert tuple(g(torch.from_numpy(z)).shape) == (2, 3, 16, 16)
    torch.testing.assert_close(loaded.generator(torch.from_numpy(z)), g(torch.from_numpy(z)))
    assert meta.step == expected[-1] and meta.vocabulary


def test_every_registers_each_evaluated_checkpoint_and_keeps_a_copy_for_each(
        stack, tracking_uri, dataset, tmp_path, private_cache):
    storage = tmp_path / "ckpt"
    spec = job_spec("reg-every", dataset, model=TINY_COND_DCGAN,
                    train={"steps": 6, "batch_size": 8, "report_every_s": 1000.0},
                    checkpoint={"every_steps": 2, "keep": 1, "storage": str(storage)},
                    registry={"register": "every"}, eval=EVAL)
    c, run_id, reporter = _train_registering(tracking_uri, spec, storage)
    registered = _versions(c, "reg-every")
    assert sorted(int(v.tags["step"]) for v in registered.values()) == [2, 4, 6] == [s for s, _ in _evaluated(reporter)]
    assert [int(registered[v].tags["step"]) for v in sorted(registered)] == [2, 4, 6]  # registered in step order
    assert c.get_model_version_by_alias("reg-every", "candidate").tags["step"] == "6"
    assert sorted(p.name for p in (storage / spec.name / KEPT_FOLDER / run_id).iterdir()) == \
        ["checkpoint_000000002", "checkpoint_000000004", "checkpoint_000000006"]
    last = str(storage / spec.name / "checkpoint_000000006")
    assert register_finished(c, spec, run_id, last, None, {}) == max(registered)
    assert len(_versions(c, "reg-every")) == 3


def test_last_registers_the_final_generator_once_and_none_registers_nothing(
        stack, tracking_uri, dataset, tmp_path, private_cache):
    from trainers.checkpoints.format import generator_from_checkpoint
    from trainers.loop import GanLoop

    storage = tmp_path / "ckpt"
    c = tracking_server.client(tracking_uri)
    for mode in ("last", "none"):
        spec = job_spec(f"reg-{mode}", dataset, model=TINY_COND_DCGAN,
                        train={"steps": 4, "batch_size": 8, "report_every_s": 1000.0},
                        checkpoint={"every_steps": 2, "keep": 1, "storage": str(storage)},
                        registry={"register": mode}, eval=EVAL)
        reporter = DirectoryReporter(storage / spec.name)
        GanLoop(spec).run(reporter)
        run_id = runs.create_run(c, spec.to_dict(), spec.digest(), f"{storage}/{spec.name}")
        ckpt = str(reporter.checkpoints[-1])
        g, info = generator_from_checkpoint(ckpt)
        first = register_finished(c, spec, run_id, ckpt, g, info)
        again = register_finished(c, spec, run_id, ckpt, g, info)
        if mode == "none":
            assert first is again is None and not c.search_registered_models(f"name='{spec.name}'")
            continue
        assert first == again == 1 and len(_versions(c, spec.name)) == 1
        v = c.get_model_version_by_alias(spec.name, "candidate")
        kept = storage / spec.name / KEPT_FOLDER / run_id / "checkpoint_000000004"
        assert (v.version, v.tags["step"], v.tags["checkpoint_uri"]) == ("1", "4", str(kept))
        assert (kept / "state.pt").read_bytes() == (reporter.checkpoints[-1] / "state.pt").read_bytes()
        assert v.tags["kimg"] == "0.032"
        # the version carries the final checkpoint's own evaluation, not some other number
        assert float(v.tags["metric.tag_acc"]) == pytest.approx(info["evaluation"]["tag_acc"], rel=1e-5)


# -- one Ray fit -----------------------------------------------------------------------------------------

def test_a_ray_run_registers_the_best_during_the_run_and_keeps_its_checkpoint(
        stack, ganray_home, tracking_uri, dataset, tmp_path):
    from trainers.data.storage import open_filesystem

    spec_path = write_spec(
        tmp_path / "best.yaml", "reg-ray", dataset, model=TINY_COND_DCGAN,
        train={"steps": 120, "batch_size": 16, "report_every_s": 0.5}, scaling={"workers": 1},
        checkpoint={"every_steps": 10, "keep": 1}, registry={"register": "best", "best_by": "tag_accuracy"},
        eval={"metrics": ["tag_accuracy"], "every_steps": 20, "tag_samples": 32, "judge_epochs": 1})
    summary = json.loads(ganray(ganray_home, "run", str(spec_path), "--quiet").stdout)
    c = tracking_server.client(tracking_uri)
    registered = _versions(c, "reg-ray")
    assert summary["state"] == "finished" and summary["version"] == max(registered)
    assert summary["model_uri"] == f"models:/reg-ray/{max(registered)}"
    assert int(c.get_model_version_by_alias("reg-ray", "candidate").version) == max(registered)

    # registered during the run: the first version was created before the last step was reported
    history = c.get_metric_history(summary["run_id"], "step")
    last_step_ms = min(m.timestamp for m in history if m.value == 120)
    first = registered[min(registered)]
    assert first.creation_timestamp < last_step_ms, (first.creation_timestamp, last_step_ms)

    # each version beats every earlier evaluation, as the run's tag_acc history says
    accs = {int(m.step): m.value for m in c.get_metric_history(summary["run_id"], "tag_acc")}
    assert sorted(accs) == [20, 40, 60, 80, 100, 120]
    best, improving = -math.inf, []
    for step in sorted(accs):
        if accs[step] > best:
            improving.append(step)
            best = accs[step]
    assert sorted(int(v.tags["step"]) for v in registered.values()) == improving

    # storage: Ray kept its latest checkpoint only; the best version's checkpoint is kept beside it
    fs, root = open_filesystem(summary["checkpoint_uri"].rsplit("/", 1)[0])
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root))
    assert [n for n in names if re.fullmatch(r"checkpoint_\d+", n)] == ["checkpoint_000000120"]
    best_uri = registered[max(registered)].tags["checkpoint_uri"]
    run_folder = f"{root}/{KEPT_FOLDER}/{summary['run_id']}"
    assert best_uri.endswith(f"/{KEPT_FOLDER}/{summary['run_id']}/checkpoint_{improving[-1]:09d}")
    kept = sorted(n for n in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(run_folder))
                  if n != summary["run_id"])  # (S3 lists the folder's own marker too)
    assert kept == [f"checkpoint_{s:09d}" for s in improving]  # one copy per registered version
    _, best_path = open_filesystem(best_uri)
    assert fs.exists(f"{best_path}/state.pt")

    out = tmp_path / "best.npz"
    ganray(ganray_home, "generate", "reg-ray@candidate", "--tags", "hat", "--n", "2", "--out", str(out))
    assert np.load(out)["images"].shape == (2, 16, 16, 3)
    # the same name again prints the same summary and registers nothing more
    again = json.loads(ganray(ganray_home, "run", str(spec_path), "--quiet").stdout)
    assert again == summary and len(_versions(c, "reg-ray")) == len(registered)
