"""Where the cluster is: the environment first, then the local stack's profile.

:func:`resolve_endpoints` reads, and changes nothing. :func:`applied` puts what a
process needs to reach those endpoints (Ray address and token, MLflow URI, S3
endpoint and the local stack's keys) into ``os.environ`` for a block and restores it
afterwards, so a library call such as ``run_job`` leaves its caller's environment as
it was; the CLI, which is its own process, applies it once (:func:`use_cluster_environment`).
:func:`stack_env` is the one translation of a stack's profile into environment variables.

Endpoints may be printed; credentials only ever go into the environment of this
process and its children, never into a log, an error or the job's runtime env. A stack
started with ``--auth`` adds its MLflow login (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, each unless the environment sets it), for its own MLflow
server only; :func:`use_cluster_environment` checks it once and turns a refusal into a
clear error.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from trainers import settings
from orchestrator.tracking_server import QUICK_REQUESTS
from trainers.data.storage import read_local_credentials
from trainers.errors import GanrayError

LOCAL_S3_REGION = "us-east-1"  # the embedded S3 server's region (moto takes any)


@dataclass(frozen=True)
class Endpoints:
    ray_address: str | None
    mlflow_uri: str | None
    s3_endpoint: str | None
    storage_root: str | None
    local: bool  # True when Ray comes from the embedded stack
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # what to set; may hold secrets


def stack_env(home: Path, profile: Mapping[str, Any], credentials: Mapping[str, str] | None = None,
              ray: bool = True) -> dict[str, str]:
    """The variables that point a process at the stack of home: its Ray (address and token, when
    ray), its MLflow server (with its login when the stack runs MLflow with auth) and its S3 server
    with the stack's keys. Holds secrets: never log it."""
    env: dict[str, str] = {}
    credentials = credentials or {}
    if ray and profile.get("ray_address"):
        env.update(RAY_ADDRESS=profile["ray_address"], RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(Path(home) / "ray" / "auth_token"))
    if profile.get("mlflow_uri"):
        env["MLFLOW_TRACKING_URI"] = profile["mlflow_uri"]
        if profile.get("mlflow_auth") and credentials.get("mlflow_password"):
            env.update(MLFLOW_TRACKING_USERNAME=credentials["mlflow_username"],
                       MLFLOW_TRACKING_PASSWORD=credentials["mlflow_password"])
    if profile.get("s3_endpoint"):
        env.update(AWS_ENDPOINT_URL_S3=profile["s3_endpoint"], AWS_REGION=LOCAL_S3_REGION)
        if credentials.get("access_key"):
            env.update(AWS_ACCESS_KEY_ID=credentials["access_key"], AWS_SECRET_ACCESS_KEY=credentials["secret_key"])
    return env


def resolve_endpoints(environ: Mapping[str, str] | None = None) -> Endpoints:
    """Where Ray, MLflow and object storage are: each from the environment when set there, else the stack.
    The stack's keys and login go only to the stack's own services; MLflow requests are kept short
    (``retry.QUICK_REQUESTS``: ganray waits out an unreachable server itself)."""
    environ = dict(os.environ if environ is None else environ)
    profile = settings.read_profile()
    local = not environ.get("RAY_ADDRESS") and bool(profile.get("ray_address"))
    own_s3 = not (environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"))
    own_mlflow = (environ.get("MLFLOW_TRACKING_URI") or profile.get("mlflow_uri")) == profile.get("mlflow_uri")
    wanted = stack_env(settings.ganray_home(), profile, read_local_credentials(), ray=local)
    if not own_s3 or environ.get("AWS_ACCESS_KEY_ID"):  # someone else's S3, or keys of the caller's own
        wanted = {k: v for k, v in wanted.items() if not (k.startswith("AWS_") and (not own_s3 or "KEY" in k))}
    if not own_mlflow:  # the stack's login never goes to another tracking server
        wanted = {k: v for k, v in wanted.items() if not k.startswith("MLFLOW_TRACKING_")}
    if local and environ.get("RAY_AUTH_TOKEN"):
        wanted = {k: v for k, v in wanted.items() if not k.startswith("RAY_AUTH")}
    env = {k: v for k, v in {**QUICK_REQUESTS, **wanted}.items() if not environ.get(k)}
    merged = {**environ, **env}
    return Endpoints(
        ray_address=merged.get("RAY_ADDRESS"),
        mlflow_uri=merged.get("MLFLOW_TRACKING_URI"),
        s3_endpoint=settings.env_or_profile(("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), "s3_endpoint", merged,
                                            profile={}),
        storage_root=settings.get("GANRAY_STORAGE_ROOT", merged) or profile.get("storage_root"),
        local=local, env=env)


@contextlib.contextmanager
def applied(endpoints: Endpoints) -> Iterator[Endpoints]:
    """os.environ with the endpoints' variables for the block; restored as it was afterwards."""
    saved = {k: os.environ.get(k) for k in endpoints.env}
    os.environ.update(endpoints.env)
    try:
        yield endpoints
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def use_cluster_environment() -> Endpoints:
    """For the CLI process: fills unset variables from the stack for good (before Ray is imported,
    since Ray reads its token settings once), checks an MLflow login, and returns where things are."""
    endpoints = resolve_endpoints()
    os.environ.update(endpoints.env)
    check_mlflow_login(endpoints.mlflow_uri, os.environ)
    return endpoints


def check_mlflow_login(uri: str | None, environ: Mapping[str, str]) -> None:
    """GanrayError when the tracking server refuses the login in environ (MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD); nothing without a login, or when the server cannot be reached (the
    command says so itself where it needs MLflow). The password is never named."""
    user, password = environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password and uri and uri.startswith(("http://", "https://"))):
        return
    import requests

    try:
        answer = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/users/current", auth=(user, password), timeout=10)
    except requests.RequestException:
        return
    if answer.status_code in (401, 403):
        raise GanrayError(f"MLflow at {uri} refused the credentials of user {user!r} (HTTP {answer.status_code}): "
                          f"check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or unset them to use "
                          f"the local stack's login")
