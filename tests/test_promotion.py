"""Promotion through the CLI against the real MLflow server: gates, aliases with a history, rollback,
copies between registered models with lineage, ``models list|show``, and every way to name a version.

The versions are real generators from a real checkpoint (written in-process by ``GanLoop``), registered
with evaluations whose numbers the tests choose, so each gate's outcome is known.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from conftest import ganray
from orchestrator import tracking_server
from orchestrator.registry import versions
from orchestrator.job import runs
from orchestrator.registry.promotion import Gate, failed_gates, parse_gate
from reporters import DirectoryReporter
from specs import TINY_DCGAN, job_spec
from trainers.errors import GanrayError, UsageError
from trainers.model_ref import parse_ref

EVALUATIONS = {  # version -> its evaluation (as a checkpoint carries it)
    1: {"fid": 31.2, "kid": 0.021, "tag_acc": 0.95},
    2: {"fid": 22.0, "tag_acc": 0.93},
    3: {"fid": 18.5, "tag_acc": 0.96},
    4: {"tag_acc": 0.97, "tag_acc.hat": 0.5},
}


@pytest.fixture(scope="module")
def promo(stack, tracking_uri, dataset, tmp_path_factory):
    """Model ``promo`` with versions 1-4 (EVALUATIONS) from one run; ``candidate`` on 4. Returns the run id."""
    from trainers.checkpoints.format import generator_from_checkpoint
    from trainers.generator_metadata import GeneratorMetadata
    from trainers.loop import GanLoop

    tmp = tmp_path_factory.mktemp("promo")
    spec = job_spec("promo", dataset, model=TINY_DCGAN, train={"steps": 2, "batch_size": 4},
                    checkpoint={"every_steps": 2, "storage": str(tmp / "ckpt")})
    reporter = DirectoryReporter(tmp / "ckpt" / "promo")
    GanLoop(spec).run(reporter)
    ckpt = str(reporter.checkpoints[-1])
    g, info = generator_from_checkpoint(ckpt)
    c = tracking_server.client(tracking_uri)
    run_id = runs.create_run(c, spec.to_dict(), spec.digest(), str(tmp / "ckpt" / "promo"))
    for version, evaluation in EVALUATIONS.items():
        meta = replace(GeneratorMetadata.from_checkpoint_info(info),
                       evaluation={"step": 2, "eval_settings": "chosen by the test", **evaluation})
        assert versions.register_generator(c, run_id, "promo", g, meta, spec.digest(), ckpt) == version
    versions.point_candidate(c, "promo", 4)
    return run_id


def cli(home, *args):
    return ganray(home, *args, check=False)


@pytest.fixture
def inproc(ganray_home):
    """The same CLI in this process (click's runner): (exit code, stdout, stderr) of ``ganray ARGS``. The
    environment the CLI fills in from the stack is put back afterwards."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    saved = dict(os.environ)

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    yield run
    os.environ.clear()
    os.environ.update(saved)


def show(home, ref: str, *extra: str) -> dict:
    return json.loads(ganray(home, "models", "show", ref, *extra, "--json").stdout)


def champion(tracking_uri, model="promo"):
    try:
        return int(tracking_server.client(tracking_uri).get_model_version_by_alias(model, "champion").version)
    except Exception:  # noqa: BLE001 - no champion
        return None


# -- gates, in-process ----------------------------------------------------------------------------------

def test_gates_parse_compare_and_never_pass_by_absence():
    assert parse_gate("fid<25") == Gate("fid", "<", 25.0) and parse_gate(" tag_accuracy >= 0.9 ").op == ">="
    assert parse_gate("kid<=1e-3").number == 0.001 and parse_gate("tag_acc.hat>0.5").name == "tag_acc.hat"
    for bad in ("fid=25", "fid==25", "fid!=25", "fid<abc", "<25", "fid<<25", "fid < 25 extra", "fid<nan"):
        with pytest.raises(UsageError, match="a gate is NAME OP NUMBER"):
            parse_gate(bad)
    metrics = {"fid": 31.2, "tag_acc": 0.95, "kid": float("nan")}
    assert failed_gates(metrics, [parse_gate("fid<=31.2"), parse_gate("tag_accuracy>=0.95")]) == []
    assert failed_gates(metrics, [parse_gate("fid<25")]) == ["fid = 31.2 (needs fid < 25)"]
    assert failed_gates(metrics, [parse_gate("tag_accuracy>0.96")]) == ["tag_acc = 0.95 (needs tag_accuracy > 0.96)"]
    assert failed_gates(metrics, [parse_gate("kid<1")]) == ["kid = nan (needs kid < 1)"]
    assert failed_gates({}, [parse_gate("fid>0")]) == ["fid is not measured (needs fid > 0)"]
    assert failed_gates({"tag_accuracy": 0.9}, [parse_gate("tag_acc>=0.9")]) == []  # either spelling, both ways


# -- through the CLI -----------------------------------------------------------------------------------

def test_a_failing_gate_is_refused_with_its_numbers_and_moves_nothing(promo, ganray_home, tracking_uri):
    before = champion(tracking_uri)
    p = cli(ganray_home, "promote", "promo", "--version", "1", "--alias", "champion",
            "--require", "fid<25", "--require", "tag_accuracy>=0.9", "--require", "kid<0.01")
    assert p.returncode == 1, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("ganray: error: promo version 1 fails its gates: ")
    assert "fid = 31.2 (needs fid < 25)" in line and "kid = 0.021 (needs kid < 0.01)" in line
    assert "tag_acc" not in line  # the gate it passes is not named
    absent = cli(ganray_home, "promote", "promo@candidate", "--alias", "champion", "--require", "fid<25")
    assert absent.returncode == 1
    assert "fid is not measured (needs fid < 25); it has tag_acc, tag_acc.hat" in absent.stderr
    assert champion(tracking_uri) == before


def test_promotions_move_champion_and_rollback_gives_it_back_twice(promo, ganray_home, tracking_uri):
    assert champion(tracking_uri) is None
    assert "-> version 1 (it had no holder)" in ganray(ganray_home, "promote", "promo/1", "--alias", "champion").stdout
    out = ganray(ganray_home, "promote", "promo", "--version", "2", "--alias", "champion",
                 "--require", "fid<25", "--require", "tag_accuracy>=0.9").stdout
    assert "promo@champion -> version 2 (was 1)" in out and champion(tracking_uri) == 2
    done = json.loads(ganray(ganray_home, "promote", "models:/promo/3", "--alias", "champion", "--require", "fid<20",
                             "--json").stdout)
    assert done == {"model": "promo", "version": 3, "alias": "champion", "previous": 2, "source": None}
    again = ganray(ganray_home, "promote", "promo/3", "--alias", "champion").stdout
    assert "already held it" in again
    model = show(ganray_home, "promo")
    assert model["alias_history"]["champion"] == [1, 2]  # a second promotion of 3 recorded nothing
    assert {"alias": "champion", "version": 3} in model["aliases"]

    back = ganray(ganray_home, "rollback", "promo", "--alias", "champion").stdout
    assert "promo@champion -> version 2 (was 3)" in back
    assert champion(tracking_uri) == 2
    assert "-> version 1 (was 2)" in ganray(ganray_home, "rollback", "promo@champion").stdout
    assert champion(tracking_uri) == 1 and show(ganray_home, "promo")["alias_history"]["champion"] == []
    past = cli(ganray_home, "rollback", "promo", "--alias", "champion")
    assert past.returncode == 1 and "promo@champion has no earlier holder to roll back to" in past.stderr
    assert champion(tracking_uri) == 1


def test_copy_to_another_model_carries_lineage_and_its_own_alias(promo, ganray_home, inproc, tracking_uri, tmp_path):
    out = ganray(ganray_home, "promote", "promo@candidate", "--copy-to", "promo-prod", "--alias", "champion",
                 "--require", "tag_accuracy>=0.95").stdout
    assert "copied promo version 4 to promo-prod version 1" in out
    assert "promo-prod@champion -> version 1 (it had no holder)" in out
    prod = show(ganray_home, "promo-prod@champion")
    assert prod["version"] == 1 and prod["aliases"] == ["champion"] and prod["name"] == "promo-prod"
    assert prod["lineage"] == {"source_model": "promo", "source_version": 4, "source_run": promo}
    assert prod["metrics"]["tag_acc"] == pytest.approx(0.97) and prod["source"] == "models:/promo/4"
    assert champion(tracking_uri, "promo") != 4  # the source model's aliases are its own
    # copying the same version again finds the copy; a failing gate copies nothing
    again = json.loads(ganray(ganray_home, "promote", "models:/promo/4", "--copy-to", "promo-prod", "--json").stdout)
    assert (again["model"], again["version"], again["source"]) == ("promo-prod", 1, {"model": "promo", "version": 4})
    refused = cli(ganray_home, "promote", "promo/1", "--copy-to", "promo-prod", "--require", "fid<25")
    assert refused.returncode == 1 and "fid = 31.2 (needs fid < 25)" in refused.stderr
    assert [v["version"] for v in show(ganray_home, "promo-prod")["versions"]] == [1]
    # the copy serves: the same samples as its source
    ganray(ganray_home, "generate", "promo-prod@champion", "--n", "2", "--seed", "7", "--out", str(tmp_path / "a.npz"))
    code, _, err = inproc("generate", "promo", "--version", "4", "--n", "2", "--seed", "7",
                          "--out", str(tmp_path / "b.npz"))
    assert code == 0, err
    a, b = np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"]
    assert a.shape == (2, 16, 16, 3) and np.array_equal(a, b)


def test_models_list_and_show_carry_ints_and_lists(promo, ganray_home, inproc):
    rows = json.loads(ganray(ganray_home, "models", "list", "--json").stdout)
    row = next(r for r in rows if r["name"] == "promo")
    assert row["versions"] == 4 and row["latest_version"] == 4 and isinstance(row["aliases"], list)
    assert {"alias": "candidate", "version": 4} in row["aliases"]
    model = show(ganray_home, "promo")
    assert [v["version"] for v in model["versions"]] == [4, 3, 2, 1]
    assert all(isinstance(v["aliases"], list) and isinstance(v["version"], int) for v in model["versions"])
    v1 = json.loads(inproc("models", "show", "promo/1", "--json")[1])
    assert v1["metrics"] == {"fid": pytest.approx(31.2), "kid": pytest.approx(0.021), "tag_acc": pytest.approx(0.95)}
    assert v1["step"] == 2 and v1["run_id"] == promo and v1["lineage"] is None and v1["eval_settings"]
    assert json.loads(inproc("models", "show", "promo@candidate", "--json")[1])["aliases"] == ["candidate"]
    text = inproc("models", "show", "promo")[1]
    assert "promo version 4  aliases: candidate" in text and "metrics: tag_acc 0.97" in text
    assert "promo version 1" in text and "metrics: fid 31.2, kid 0.021, tag_acc 0.95" in text
    listed = inproc("models", "list")[1]
    assert any(line.startswith("promo ") and "4 versions" in line and "candidate -> 4" in line
               for line in listed.splitlines())


def test_every_addressing_form_names_the_same_version_in_every_command(promo, inproc, tracking_uri, tmp_path):
    assert inproc("promote", "promo/2", "--alias", "silver")[0] == 0
    forms = [("promo", "--version", "2"), ("promo/2",), ("models:/promo/2",), ("promo@silver",),
             ("models:/promo@silver",)]
    images = []
    for i, form in enumerate(forms):
        code, out, err = inproc("models", "show", *form, "--json")
        assert code == 0 and json.loads(out)["version"] == 2, (form, err)
        assert inproc("promote", *form, "--alias", "bronze")[0] == 0
        assert int(tracking_server.client(tracking_uri).get_model_version_by_alias("promo", "bronze").version) == 2
        code, _, err = inproc("generate", *form, "--n", "1", "--seed", "3", "--out", str(tmp_path / f"{i}.npz"))
        assert code == 0, err
        images.append(np.load(tmp_path / f"{i}.npz")["images"])
    assert all(images[0].shape == (1, 16, 16, 3) and np.array_equal(images[0], x) for x in images[1:])


@pytest.mark.parametrize("args,message", [
    (("promote", "promo/1", "--alias", "champion", "--require", "fid=25"), "a gate is NAME OP NUMBER"),
    (("promote", "promo/1", "--alias", "champion", "--require", "fid<twenty"), "a gate is NAME OP NUMBER"),
    (("promote", "promo", "--alias", "champion"), "'promo' names no version"),
    (("promote", "promo@silver", "--version", "2", "--alias", "x"), "one too many"),
    (("promote", "promo/1"), "promote needs --alias"),
    (("promote", "promo/1", "--alias", "v 1"), "an alias is letters"),
    (("promote", "promo/1", "--copy-to", "prod@x"), "expected a registered model's bare name"),
    (("promote", "promo/1", "--copy-to", "my prod"), "outside ganray's model-name grammar"),
    (("promote", "promo/1", "--alias", "latest"), "is reserved by MLflow"),
    (("rollback", "promo", "--alias", "v2"), "is reserved by MLflow"),
    (("models", "show", "promo/zero"), "a model version is a whole number"),
    (("rollback", "promo"), "rollback needs an alias"),
    (("rollback", "promo/2"), "rollback takes MODEL --alias ALIAS or MODEL@ALIAS"),
    (("rollback", "promo@a", "--alias", "b"), "names alias 'a' but --alias says 'b'"),
    (("generate", "models:/promo", "--out", "x.png"), "names no version"),
])
def test_malformed_gates_and_references_are_usage_errors(inproc, args, message):
    code, _, err = inproc(*args)
    assert code == 2, (code, err)
    assert err.strip().splitlines()[-1].startswith("ganray: error: ") and message in err


def test_a_usage_error_exits_2_from_the_installed_command_too(ganray_home):
    p = cli(ganray_home, "promote", "promo/1", "--alias", "champion", "--require", "fid>>1")
    assert p.returncode == 2 and p.stderr.strip() == (
        "ganray: error: --require 'fid>>1': a gate is NAME OP NUMBER with OP one of <, <=, >, >= "
        "(e.g. \"fid<25\" or \"tag_accuracy>=0.9\")")


def test_a_version_or_model_that_is_not_there_is_named(promo, inproc):
    code, _, err = inproc("promote", "promo/99", "--alias", "champion")
    assert code == 1 and "model 'promo' has no version 99 (versions: 1, 2, 3, 4;" in err
    code, _, err = inproc("models", "show", "promo@gold")
    assert code == 1 and "has no alias 'gold'" in err and "candidate -> 4" in err
    code, _, err = inproc("models", "show", "no-such-model")
    assert code == 1 and "no registered model 'no-such-model'" in err
    code, _, err = inproc("rollback", "no-such-model", "--alias", "champion")
    assert code == 1 and "no registered model 'no-such-model'" in err


def test_the_one_loader_names_what_the_registry_has_when_a_model_alias_or_version_is_missing(
        promo, tracking_uri, monkeypatch):
    """deploy.loader is the resolver and loader of every command and of the server: one error family."""
    from deploy.loader import LoadError, RegistryError, load_named, load_version, named_version, registry_client

    client = registry_client(tracking_uri)
    assert int(named_version(client, parse_ref("promo/3")).version) == 3
    assert int(named_version(client, parse_ref("promo@candidate")).version) == 4
    cases = [("no-such-model/1", ["no registered model 'no-such-model' at " + tracking_uri]),
             ("promo@gold", ["model 'promo' has no alias 'gold' (versions: 1, 2, 3, 4; aliases: ", "candidate -> 4"]),
             ("promo/99", ["model 'promo' has no version 99 (versions: 1, 2, 3, 4; aliases: ", "candidate -> 4"])]
    for text, words in cases:
        for find in (named_version, load_named):
            with pytest.raises(RegistryError) as err:
                find(client, parse_ref(text))
            assert type(err.value) is RegistryError and all(w in str(err.value) for w in words), (text, err.value)
            assert isinstance(err.value, GanrayError) and isinstance(err.value, LookupError)
    with pytest.raises(LoadError, match="cannot load models:/promo/99"):  # a version that is not there, by number
        load_version(client, parse_ref("promo@candidate"), 99)
    assert issubclass(LoadError, RegistryError)
    model = load_named(client, parse_ref("models:/promo@candidate"))
    assert (model.name, model.version, model.alias, model.uri) == ("promo", 4, "candidate", "models:/promo/4")
    assert model.meta.z_dim == 8 and model.meta.evaluation["tag_acc"] == pytest.approx(0.97)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryError, match="cannot read the model registry at http://127.0.0.1:9"):
        named_version(registry_client("http://127.0.0.1:9"), parse_ref("promo/1"))  # nothing listens there
