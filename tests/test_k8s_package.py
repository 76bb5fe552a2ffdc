"""The manifests and the image agree with the package: every `ganray ...`, `mlflow server ...` and
`ray start` command line parses with the real click command (an unknown flag, a bad choice or a
missing required option fails), every ganray container runs the image the root Dockerfile builds."""
from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import tomllib

import click
import pytest

from conftest import ROOT
from k8s_manifests import K8S, OVERLAYS, RAY_KINDS, TARGETS, cluster_spec, containers, pod_templates, render

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
AGENT_SCRIPT = K8S / "base" / "notice-agent.sh"


def cli_error(command: click.Command, argv: list[str], name: str) -> str | None:
    """Why click would refuse argv for command (groups walked to the subcommand), or None."""
    try:
        while isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), argv[0]) if argv else None
            if sub is None:
                return f"{name}: no command {argv[:1]}"
            command, name, argv = sub, f"{name} {argv[0]}", argv[1:]
        command.make_context(name, list(argv))
    except click.ClickException as err:
        return f"{name} {' '.join(argv)}: {err.format_message()}"
    return None


def ganray_command_lines(docs) -> list[tuple[str, list[str]]]:
    """(where, argv after `ganray`) of every ganray command in the manifests: container commands,
    the notice agent's script with the container's args for "$@", the RayJob's entrypoint."""
    lines = []
    for where, c in containers(docs):
        argv = c.get("command", []) + c.get("args", [])
        if argv[:1] == ["ganray"]:
            lines.append((where, argv[1:]))
        elif any(a.endswith("/notice-agent.sh") for a in argv):
            script = [ln.strip() for ln in AGENT_SCRIPT.read_text().splitlines() if ln.strip().startswith("ganray ")]
            assert len(script) == 1, "notice-agent.sh runs ganray once"
            words = [w for w in shlex.split(script[0]) if w != "&"]
            lines.append((where, [*words[1:words.index("$@")], *c.get("args", [])]))
    lines += [(f"RayJob/{d['metadata']['name']}", shlex.split(d["spec"]["entrypoint"])[1:])
              for d in docs if d["kind"] == "RayJob"]
    return lines


@pytest.mark.parametrize("target", TARGETS)
def test_every_ganray_command_line_parses_with_the_cli(target):
    from orchestrator.cli import main

    lines = ganray_command_lines(render(target))
    assert {argv[0] for _, argv in lines} == {"run", "agent"}
    assert [e for where, argv in lines if (e := cli_error(main, argv, f"{where}: ganray"))] == []


def test_the_flag_check_refuses_what_the_cli_refuses():
    from orchestrator.cli import main

    assert cli_error(main, ["agent", "--provider", "aws", "--node-ip", "10.0.0.1"], "ganray")
    assert cli_error(main, ["agent", "--provider", "azure"], "ganray")
    assert cli_error(main, ["agent", "--margin-s", "10"], "ganray")  # --provider is required
    assert cli_error(main, ["srve", "anime-gen@champion"], "ganray")
    assert cli_error(main, ["agent", "--provider", "gcp", "--address", "10.0.0.1:6379"], "ganray") is None


@pytest.mark.parametrize("target", TARGETS)
def test_mlflow_and_ray_start_options_exist(target):
    from mlflow.cli import server
    from ray.scripts.scripts import start

    docs = render(target)
    mlflow = [c for _, c in containers(docs) if c.get("command") == ["mlflow", "server"]]
    assert len(mlflow) == 1 and cli_error(server, mlflow[0]["args"], "mlflow server") is None
    assert cli_error(server, ["--app-name=basic-ath"], "mlflow server")
    for doc in (d for d in docs if d["kind"] in RAY_KINDS):
        spec = cluster_spec(doc)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            argv = [a for k, v in group["rayStartParams"].items() for a in (f"--{k}", v)]
            assert cli_error(start, argv, "ray start") is None
    assert cli_error(start, ["--num-cpu", "0"], "ray start")


def _image(target: str) -> set[str]:
    return {c["image"] for _, c in containers(render(target)) if not c["image"].startswith("postgres:")}


def test_every_ganray_container_runs_the_image_of_this_version():
    assert _image("base") == {"ganray"}
    version = PYPROJECT["project"]["version"]
    for overlay in OVERLAYS:
        (image,) = _image(f"overlays/{overlay}")
        assert image.endswith(f"/ganray:{version}"), image


def test_the_dockerfile_builds_the_package_with_its_pins_as_a_non_root_user():
    pins = dict(ln.split("==") for ln in (ROOT / "constraints.txt").read_text().splitlines() if "==" in ln)
    base = re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:(\S+?)-cuda[\d.]+-cudnn\d+-runtime$", DOCKERFILE, re.M)
    assert base and base.group(1) == pins["torch"], "the base image's torch is constraints.txt's"
    assert re.search(r"pip install -c constraints\.txt \. ", DOCKERFILE)
    assert "sys.version_info[:2] == (3, 11)" in DOCKERFILE and ">=3.11,<3.12" in PYPROJECT["project"]["requires-python"]
    copied = set(re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M)) | set(
        re.search(r"^COPY (.+) \./$", DOCKERFILE, re.M).group(1).split())
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", "constraints.txt", PYPROJECT["project"]["readme"]} <= copied
    assert re.search(r"^USER 1000$", DOCKERFILE, re.M) and "useradd --uid 1000" in DOCKERFILE
    users = {t["spec"]["securityContext"]["runAsUser"] for d in render("base") for _, t in pod_templates(d)
             if "securityContext" in t["spec"]}
    assert users == {1000, 999}  # ganray pods, and the postgres image's user


def test_the_console_script_is_the_cli_the_manifests_call():
    module, attr = PYPROJECT["project"]["scripts"]["ganray"].split(":")
    from orchestrator.cli import main

    assert getattr(importlib.import_module(module), attr) is main
    assert "ganray --help" in DOCKERFILE  # the build fails unless the console script runs
    assert re.search(r'"mlflow\[auth\]"', DOCKERFILE) and "psycopg2" in DOCKERFILE  # basic-auth, postgresql://


def _users_script():
    spec = importlib.util.spec_from_file_location("mlflow_users", K8S / "base" / "mlflow_users.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mlflow_users_job_command_parses_with_the_script():
    job = next(d for d in render("overlays/aws") if d["kind"] == "Job" and d["metadata"]["name"] == "ganray-mlflow-users")
    container = job["spec"]["template"]["spec"]["containers"][0]
    python, path, *argv = container["command"] + container.get("args", [])
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert python == "python" and path.endswith("/mlflow_users.py") and volume["configMap"]["name"] == "ganray-mlflow-users"
    parser = _users_script().parser()
    assert parser.parse_args(argv).command == "setup"
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--experimnt", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["person", "alice", "--permission", "ADMIN"])


@pytest.mark.parametrize("target", TARGETS)
def test_mlflow_logins_are_mounted_where_mlflow_reads_them(target):
    # MLflow's client reads ~/.mlflow/credentials; the image's user is ganray, its home /home/ganray.
    assert "useradd --uid 1000 --user-group --create-home" in DOCKERFILE and "WORKDIR /home/ganray" in DOCKERFILE
    mounts = {m["mountPath"] for _, c in containers(render(target)) for m in c.get("volumeMounts", [])
              if m["mountPath"].endswith("/.mlflow")}
    assert mounts == {"/home/ganray/.mlflow"}
