"""The one model-reference grammar (trainers/model_ref.py): every command, the server and the spec give the
same verdict on the same text.

Each row of ROWS is tried through the real CLI in-process (click's runner on ``orchestrator.cli.main``:
promote, rollback, models show, generate, serve, serve --stop), through the replica's reading of its
args (``ServeConfig.from_args``) and, for names, through the spec (``registry.model_name``). MLflow is a
closed loopback port and GANRAY_HOME an empty folder, so nothing is found: a refused reference exits 2
with the grammar's message before any MLflow call, an accepted one gets past parsing and fails later,
exit 1, naming the registry (the Ray dashboard, for serve --stop). No servers are started.
"""
from __future__ import annotations

import os
import socket

import pytest

from trainers.errors import UsageError
from trainers.model_ref import ModelRef, name_fault, parse_alias, parse_name, parse_ref

NAME, ALIAS, VERSION = "name", "alias", "version"  # what an accepted text names
NAME_RULE_BROKEN = "outside ganray's model-name grammar"
ROWS = [  # (text, what it names or None when refused, the words of its refusal)
    ("faces", NAME, ""), ("Faces.v2", NAME, ""), ("a-b_c.d", NAME, ""), ("0", NAME, ""), ("a" * 128, NAME, ""),
    ("models:/faces", NAME, ""),
    ("a" * 129, None, f"{NAME_RULE_BROKEN} (it has 129 characters)"),
    ("-x", None, f"{NAME_RULE_BROKEN} (it starts with '-')"),
    (".x", None, f"{NAME_RULE_BROKEN} (it starts with '.')"),
    ("_x", None, f"{NAME_RULE_BROKEN} (it starts with '_')"),
    ("my model", None, f"the model name 'my model' is {NAME_RULE_BROKEN} (it holds ' ')"),
    ("x y@champion", None, f"the model name 'x y' in 'x y@champion' is {NAME_RULE_BROKEN} (it holds ' ')"),
    (" m@a", None, f"{NAME_RULE_BROKEN} (it starts with ' ')"),
    ("m /3", None, f"{NAME_RULE_BROKEN} (it holds ' ')"),
    ("runs:/abc/generator", None, f"the model name 'runs:' in 'runs:/abc/generator' is {NAME_RULE_BROKEN}"),
    ("m@_x", ALIAS, ""), ("m@champion_2", ALIAS, ""), ("m@c-1", ALIAS, ""), ("m@v", ALIAS, ""),
    ("m@v3x", ALIAS, ""), ("m@latest_1", ALIAS, ""), ("models:/m@a", ALIAS, ""),
    ("m@v1.2", None, "the alias 'v1.2' in 'm@v1.2' is not an alias"),
    ("m@a.b", None, "the alias 'a.b' in 'm@a.b' is not an alias"),
    ("m@a ", None, "the alias 'a ' in 'm@a ' is not an alias"),
    ("m@-a", None, "the alias '-a' in 'm@-a' is not an alias"),
    ("m@latest", None, "the alias 'latest' in 'm@latest' is reserved by MLflow"),
    ("m@LATEST", None, "the alias 'LATEST' in 'm@LATEST' is reserved by MLflow"),
    ("m@v3", None, "the alias 'v3' in 'm@v3' is reserved by MLflow"),
    ("m@V3", None, "the alias 'V3' in 'm@V3' is reserved by MLflow"),
    ("m@" + "a" * 256, None, "has 256 characters (MLflow takes at most 255)"),
    ("m/1", VERSION, ""), ("m/12", VERSION, ""), ("models:/m/3", VERSION, ""),
    ("m/0", None, "a model version is a whole number from 1, got '0' in 'm/0'"),
    ("m/-1", None, "a model version is a whole number from 1, got '-1' in 'm/-1'"),
    ("m/1.5", None, "a model version is a whole number from 1, got '1.5' in 'm/1.5'"),
    ("m/x", None, "a model version is a whole number from 1, got 'x' in 'm/x'"),
    ("m/01", None, "a model version is a whole number from 1, got '01' in 'm/01'"),
    ("models:/", None, "'models:/' names no model"), ("models://3", None, "'models://3' names no model"),
    ("m@", None, "the alias '' in 'm@' is empty"), ("@a", None, "'@a' names no model"),
    ("m/", None, "a model version is a whole number from 1, got '' in 'm/'"), ("/3", None, "'/3' names no model"),
    ("", None, "'' names no model"),
    ("m@@a", None, "'m@@a' has more than one '@' or '/'"), ("m//3", None, "'m//3' has more than one '@' or '/'"),
    ("m@a/3", None, "'m@a/3' has more than one '@' or '/'"), ("m/3@a", None, "'m/3@a' has more than one '@' or '/'"),
    ("m@a@b", None, "'m@a@b' has more than one '@' or '/'"),
]
# Each command: its arguments for a text, and what it takes (refusing the other kinds with its own words).
NEEDS_A_VERSION = "names no version: use NAME@ALIAS, NAME/VERSION"
COMMANDS = {  # the text after "--" (or as --stop=TEXT), so that "-x" is read as a model, not an option
    "promote": (lambda t, out: ["promote", "--alias", "champion", "--", t], {ALIAS, VERSION}, NEEDS_A_VERSION),
    "rollback": (lambda t, out: ["rollback"] + ([] if "@" in t else ["--alias", "champion"]) + ["--", t],
                 {NAME, ALIAS}, "rollback takes MODEL --alias ALIAS or MODEL@ALIAS"),
    "models show": (lambda t, out: ["models", "show", "--", t], {NAME, ALIAS, VERSION}, ""),
    "generate": (lambda t, out: ["generate", "--n", "2", "--out", out, "--", t], {ALIAS, VERSION}, NEEDS_A_VERSION),
    "serve": (lambda t, out: ["serve", "--", t], {ALIAS, VERSION}, "names no version: use NAME@ALIAS or NAME/VERSION"),
    "serve --stop": (lambda t, out: ["serve", f"--stop={t}"], {NAME, ALIAS, VERSION}, ""),
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """``ganray ARGS`` in this process with nothing to find: (exit code, last stderr line)."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GANRAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused connection fails at once
    saved = dict(os.environ)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        lines = result.stderr.strip().splitlines()
        return result.exit_code, lines[-1] if lines else ""

    yield run
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_gives_each_text_the_grammar_s_verdict(cli, command, tmp_path):
    args_of, takes, wrong_kind = COMMANDS[command]
    out = str(tmp_path / "x.png")
    for text, kind, why in ROWS:
        code, line = cli(*args_of(text, out))
        assert line.startswith("ganray: error: "), (command, text, code, line)
        if kind is None:
            assert code == 2 and why in line and "NAME@ALIAS" in line and "NAME/VERSION" in line, (command, text, line)
        elif kind not in takes:
            assert code == 2 and wrong_kind in line, (command, text, line)
        else:  # past the grammar: the registry (or the dashboard) at the closed port is what fails
            names = "Ray dashboard" if command == "serve --stop" else "registry"
            assert code == 1 and names in line and "127.0.0.1" in line, (command, text, code, line)
    assert not (tmp_path / "x.png").exists()


def test_the_replica_gives_each_text_the_same_verdict():
    from deploy.serve_config import ArgsError, ServeConfig

    for text, kind, why in ROWS:
        if kind in (ALIAS, VERSION):
            model = ServeConfig.from_args({"model": text, "token_sha256": "0" * 64}).model
            assert model == parse_ref(text) and str(model) == text.removeprefix("models:/")
        else:
            with pytest.raises(ArgsError) as err:
                ServeConfig.from_args({"model": text})
            assert (why or "names no version: use NAME@ALIAS or NAME/VERSION") in str(err.value), (text, err.value)


def test_the_spec_takes_exactly_the_names_of_the_grammar_as_registry_model_name():
    from orchestrator.job.spec_file import SpecError, parse_spec

    base = {"name": "job", "data": {"url": "s3://b/d"}, "model": {"arch": "dcgan"}}
    for text, kind, why in ROWS:
        if kind == NAME and not text.startswith("models:/"):
            assert parse_spec({**base, "registry": {"model_name": text}}).model_name == text
            assert parse_name(text) == text
            continue
        with pytest.raises(SpecError) as err:
            parse_spec({**base, "registry": {"model_name": text}})
        assert "registry.model_name" in str(err.value) and f"({name_fault(text)})" in str(err.value), err.value
        with pytest.raises(UsageError):
            parse_name(text)
    # The default model name is the job name, whose rule is narrower: every job name is a model name.
    for job in ("a" * 63, "0" + "-" * 62, "z._-9", "7"):
        spec = parse_spec({**base, "name": job})
        assert spec.registry.model_name is None and parse_name(spec.model_name) == job
    with pytest.raises(SpecError):
        parse_spec({**base, "name": "a" * 64})


def test_the_forms_read_back_as_what_they_name():
    v2 = ModelRef("faces", version=2)
    assert parse_ref("faces", "2") == parse_ref("faces/2") == parse_ref("models:/faces/2") == v2
    assert parse_ref("faces@champion") == parse_ref("models:/faces@champion") == ModelRef("faces", alias="champion")
    assert parse_ref("faces") == ModelRef("faces") and not parse_ref("faces").names_a_version
    assert (v2.uri, str(v2), parse_ref("faces@c-1").uri, ModelRef("faces").uri) == (
        "models:/faces/2", "faces/2", "models:/faces@c-1", "models:/faces")
    for text, kind, _ in ROWS:
        if kind:
            assert parse_ref(str(parse_ref(text))) == parse_ref(text)  # str() writes what parse_ref reads
    assert parse_ref("faces@champion").follows_alias and not v2.follows_alias
    with pytest.raises(UsageError, match="one too many"):
        parse_ref("faces@champion", "2")
    with pytest.raises(UsageError, match=r"a model version is a whole number from 1, got '0' \(--version\)"):
        parse_ref("faces", "0")
    with pytest.raises(UsageError, match="'faces' names no version: use NAME@ALIAS, NAME/VERSION or NAME --version"):
        parse_ref("faces", need_version=True)
    with pytest.raises(UsageError, match="a model reference is text"):
        parse_ref(None)


def test_an_alias_or_a_name_alone_follows_the_same_rules():
    assert parse_alias("_x") == "_x" and parse_name("Faces.v2") == "Faces.v2"
    for alias, words in (("v1.2", "is not an alias"), ("latest", "reserved by MLflow"), ("Latest", "reserved"),
                         ("v10", "reserved"), ("", "is empty")):
        with pytest.raises(UsageError, match=words):
            parse_alias(alias, "(--alias)")
    for name, words in (("prod@x", "bare name"), ("prod/1", "bare name"), ("models:/prod", "bare name"),
                        ("my prod", f"{NAME_RULE_BROKEN} (it holds ' ')"), ("", "(it is empty)")):
        with pytest.raises(UsageError) as err:
            parse_name(name, "(--copy-to)")
        assert words in str(err.value) and "(--copy-to)" in str(err.value), err.value
