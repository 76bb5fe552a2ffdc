"""MLflow's users for ganray on Kubernetes, made through the basic-auth app's REST API as its admin
(``mlflow.server.auth.client.AuthServiceClient``; docs/cluster.md, "MLflow users").

``setup`` (the Job ganray-mlflow-users, k8s/base/mlflow-users.yaml, run on every apply): the training and
serving users, created, or their passwords set, from their MLflow credentials files (the Secrets
ganray-mlflow-train and ganray-mlflow-serve, which their pods mount as ~/.mlflow/credentials); the
experiment and the registered model the jobs use, created when missing; then training gets EDIT on both
(it logs runs, registers versions, moves ``candidate``) and serving READ on both (a version's files are
served from its run's artifacts, in the experiment).

``person NAME --permission READ|EDIT`` (an admin, from a laptop with a port-forward to MLflow): a person's
own login with that permission on the same two (READ: watch runs and models; EDIT: also ``ganray stop``
and ``ganray promote``). The admin's password is asked for at the prompt, never read from the
environment; the person's password is generated and printed once, for the admin to hand over.

With ``default_permission = NO_PERMISSIONS`` (mlflow-auth.ini) a user reaches nothing else. No password
is ever an argument, a log line or part of an error.
"""
from __future__ import annotations

import argparse
import configparser
import getpass
import os
import secrets
import sys
import time
from pathlib import Path

PERMISSIONS = ("READ", "EDIT")


class SetupError(Exception):
    """Something the admin can fix; the message names it (and never a password)."""


def read_login(path: Path) -> tuple[str, str]:
    """(username, password) of an MLflow credentials file ([mlflow] mlflow_tracking_username / _password)."""
    config = configparser.ConfigParser(interpolation=None)
    try:
        config.read_string(Path(path).read_text())
        login = config["mlflow"]["mlflow_tracking_username"].strip(), config["mlflow"]["mlflow_tracking_password"].strip()
    except (OSError, KeyError, configparser.Error) as err:
        raise SetupError(f"{path}: not an MLflow credentials file with [mlflow] mlflow_tracking_username and "
                         f"mlflow_tracking_password ({type(err).__name__})") from None
    if not all(login):
        raise SetupError(f"{path}: an empty username or password")
    return login


def read_admin(folder: Path) -> tuple[str, str]:
    """The admin's login from the Secret ganray-mlflow mounted as a folder (admin_username, admin_password)."""
    try:
        login = tuple((Path(folder) / key).read_text().strip() for key in ("admin_username", "admin_password"))
    except OSError as err:
        raise SetupError(f"{folder}: cannot read the admin's login ({err.strerror})") from None
    if not all(login):
        raise SetupError(f"{folder}: an empty admin username or password")
    return login


def clients(uri: str, admin: tuple[str, str]):
    """(auth client, tracking client) of the server at uri, acting as admin. MLflow's clients take the login
    from this process's environment; it is set here, in this process only, and never printed."""
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = admin
    return AuthServiceClient(uri), MlflowClient(uri, registry_uri=uri)


def wait_for(uri: str, timeout_s: float) -> None:
    """Returns once the server answers /health; SetupError past timeout_s (MLflow may still be starting)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SetupError(f"MLflow at {uri} did not answer /health within {timeout_s:.0f} s")
        time.sleep(2)


def ensure_user(auth, username: str, password: str) -> str:
    """Creates username with password, or sets that password when the user exists; says which."""
    from mlflow.exceptions import MlflowException

    try:
        auth.create_user(username, password)
        return "created"
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise SetupError(f"cannot create user {username!r}: {err.error_code}") from None
    auth.update_user_password(username, password)
    return "password set"


def ensure_experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def ensure_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def grant(auth, username: str, experiment_id: str, model: str, permission: str) -> None:
    """username gets exactly permission on the experiment and the model (an earlier grant is replaced)."""
    from mlflow.exceptions import MlflowException

    for kind, resource in (("experiment", experiment_id), ("registered_model", model)):
        try:
            auth.grant_user_permission(username, kind, resource, permission)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.revoke_user_permission(username, kind, resource)
            auth.grant_user_permission(username, kind, resource, permission)


def setup(args: argparse.Namespace) -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise SetupError("MLFLOW_TRACKING_URI is not set (the ConfigMap ganray-env sets it)")
    wait_for(uri, args.wait_s)
    auth, client = clients(uri, read_admin(args.admin_login))
    experiment_id = ensure_experiment(client, args.experiment)
    ensure_model(client, args.model)
    for role, path, permission in (("training", args.training_login, "EDIT"), ("serving", args.serving_login, "READ")):
        username, password = read_login(path)
        done = ensure_user(auth, username, password)
        grant(auth, username, experiment_id, args.model, permission)
        print(f"mlflow-users: {role} user {username!r}: {done}; {permission} on experiment {args.experiment!r} "
              f"and registered model {args.model!r}")


def person(args: argparse.Namespace) -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise SetupError("MLFLOW_TRACKING_URI is not set: point it at MLflow (a port-forward, docs/cluster.md)")
    admin_password = getpass.getpass(f"password of MLflow's admin {args.admin!r}: ")
    auth, client = clients(uri, (args.admin, admin_password))
    experiment_id = ensure_experiment(client, args.experiment)
    ensure_model(client, args.model)
    password = secrets.token_urlsafe(18)
    done = ensure_user(auth, args.name, password)
    grant(auth, args.name, experiment_id, args.model, args.permission)
    print(f"mlflow-users: user {args.name!r}: {done}; {args.permission} on experiment {args.experiment!r} and "
          f"registered model {args.model!r}")
    print(f"password: {password}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlflow_users.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="the training and serving users (the Job ganray-mlflow-users)")
    s.add_argument("--admin-login", type=Path, required=True, help="folder of the Secret ganray-mlflow")
    s.add_argument("--training-login", type=Path, required=True, help="training's MLflow credentials file")
    s.add_argument("--serving-login", type=Path, required=True, help="serving's MLflow credentials file")
    s.add_argument("--wait-s", type=float, default=600.0, help="how long to wait for MLflow to answer")
    n = sub.add_parser("person", help="a person's own login")
    n.add_argument("name")
    n.add_argument("--permission", choices=PERMISSIONS, required=True)
    n.add_argument("--admin", default="admin", help="the admin's username (its password is asked for)")
    for q in (s, n):
        q.add_argument("--experiment", default="ganray", help="the experiment the jobs log to")
        q.add_argument("--model", default="anime-gen", help="the registered model the jobs register")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        (setup if args.command == "setup" else person)(args)
    except SetupError as err:
        print(f"mlflow-users: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line naming the failure, without the login it used
        print(f"mlflow-users: error: {type(err).__name__}: {str(err)[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
