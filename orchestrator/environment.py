"""Where the cluster is: the environment first, then the local stack's profile.

:func:`resolve_endpoints` reads, and changes nothing. :func:`applied` puts what a
process needs to reach those endpoints (Ray address and token, MLflow URI, S3
endpoint and the local stack's keys) into ``os.environ`` for a block and restores it
afterwards, so a library call such as ``run_job`` leaves its caller's environment as
it was; the CLI, which is its own process, applies it once (:func:`use_cluster_environment`).
:func:`stack_env` is the one translation of a stack's profile into environment variables.

Endpoints may be printed; credentials only ever go into the environment of this
process and its children, never into a log, an error or the job's runtime env.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from trainers import settings
from trainers.data.storage import read_local_credentials

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
    ray), its MLflow server and its S3 server with the stack's keys. Holds secrets: never log it."""
    env: dict[str, str] = {}
    if ray and profile.get("ray_address"):
        env.update(RAY_ADDRESS=profile["ray_address"], RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(Path(home) / "ray" / "auth_token"))
    if profile.get("mlflow_uri"):
        env["MLFLOW_TRACKING_URI"] = profile["mlflow_uri"]
    if profile.get("s3_endpoint"):
        env.update(AWS_ENDPOINT_URL_S3=profile["s3_endpoint"], AWS_REGION=LOCAL_S3_REGION)
        if credentials:
            env.update(AWS_ACCESS_KEY_ID=credentials["access_key"], AWS_SECRET_ACCESS_KEY=credentials["secret_key"])
    return env


def resolve_endpoints(environ: Mapping[str, str] | None = None) -> Endpoints:
    """Where Ray, MLflow and object storage are: each from the environment when set there, else the stack."""
    environ = dict(os.environ if environ is None else environ)
    profile = settings.read_profile()
    local = not environ.get("RAY_ADDRESS") and bool(profile.get("ray_address"))
    own_s3 = not (environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"))
    wanted = stack_env(settings.ganray_home(), profile,
                       read_local_credentials() if own_s3 and not environ.get("AWS_ACCESS_KEY_ID") else None,
                       ray=local)
    if not own_s3:  # S3 is someone else's: none of the stack's S3 settings apply
        wanted = {k: v for k, v in wanted.items() if not k.startswith("AWS_")}
    if local and environ.get("RAY_AUTH_TOKEN"):
        wanted = {k: v for k, v in wanted.items() if not k.startswith("RAY_AUTH")}
    env = {k: v for k, v in wanted.items() if not environ.get(k)}
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
    since Ray reads its token settings once), and returns where things are."""
    endpoints = resolve_endpoints()
    os.environ.update(endpoints.env)
    return endpoints
