"""Where the cluster is: one rule for each endpoint, the environment first, then the local stack's profile.

:func:`resolve_endpoints` answers for every command (``run``, ``submit``/``logs``/``stop``/``list``,
``status --address``, ``serve``, ``data ingest --ray``, ``agent``), reads, and changes nothing:

- Ray address (what a driver connects to): ``RAY_ADDRESS``, else the stack's.
- dashboard (Job API, Serve REST API, state API): ``--address``, else ``RAY_DASHBOARD_ADDRESS``, else
  ``RAY_ADDRESS`` when it is an http(s) URL, else the stack's dashboard when the Ray address is the
  stack's. A ``RAY_ADDRESS`` of another cluster's GCS names no dashboard: a command that needs one
  says to pass ``--address`` or set ``RAY_DASHBOARD_ADDRESS`` (:meth:`Endpoints.dashboard_url`).
  ``status`` asks Ray only for a dashboard named by one of the first three (:meth:`Endpoints.named_dashboard`).
- MLflow URI: ``MLFLOW_TRACKING_URI``, else the stack's; a Serve application's replicas get it only
  without credentials in it (:meth:`Endpoints.replica_tracking_uri`).
- S3 endpoint: the workers' rule, ``trainers.data.storage.s3_endpoint`` (``AWS_ENDPOINT_URL_S3``,
  ``AWS_ENDPOINT_URL``, else the stack's).
- storage root: ``GANRAY_STORAGE_ROOT``, else the stack's.
- local stack: :func:`is_local_stack`, for a Ray address or a dashboard URL alike: it is the
  profile's own. ``Endpoints.local`` says it of the Ray address.

:func:`applied` puts what a process needs to reach those endpoints (Ray address and token, MLflow
URI, S3 endpoint and the local stack's keys) into ``os.environ`` for a block and restores it
afterwards, so a library call such as ``run_job`` leaves its caller's environment as it was; the
CLI, which is its own process, applies it once (:func:`use_cluster_environment`). :func:`stack_env`
is the one translation of a stack's profile into environment variables.

Endpoints may be printed; credentials only ever go into the environment of this process and its
children, never into a log, an error or the job's runtime env (the Ray token's rule is in
``tokens.py``). A stack started with ``--auth`` adds its MLflow login (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, each unless the environment sets it), for its own MLflow server only;
:func:`use_cluster_environment` checks it once and turns a refusal into a clear error.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from orchestrator.cluster.tokens import check_mlflow_login
from orchestrator.tracking_server import QUICK_REQUESTS
from trainers import settings
from trainers.data.storage import read_local_credentials, s3_endpoint
from trainers.errors import GanrayError, UsageError

LOCAL_S3_REGION = "us-east-1"  # the embedded S3 server's region (moto takes any)
DASHBOARD_EXAMPLE = "http://HEAD:8265"
_ADDRESS_COMMANDS = "submit, logs, stop, list, status"  # the commands with --address URL


class ClusterError(GanrayError, RuntimeError):
    """No Ray cluster (or dashboard), or one that refuses us; the message says which and what to set."""


@dataclass(frozen=True)
class Endpoints:
    ray_address: str | None
    mlflow_uri: str | None
    s3_endpoint: str | None
    storage_root: str | None
    local: bool  # the Ray address is the embedded stack's (is_local_stack)
    dashboard: str | None = None  # the Ray dashboard's URL; None: see dashboard_url()
    dashboard_named: bool = False  # by --address, RAY_DASHBOARD_ADDRESS or an http(s) RAY_ADDRESS
    no_dashboard: str = ""  # why there is none (the error dashboard_url() raises)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # what to set; may hold secrets

    def dashboard_url(self) -> str:
        """The dashboard (module doc); ClusterError naming what to pass when there is none."""
        if self.dashboard is None:
            raise ClusterError(self.no_dashboard)
        return self.dashboard

    def named_dashboard(self) -> str | None:
        """The dashboard when --address, RAY_DASHBOARD_ADDRESS or an http(s) RAY_ADDRESS names one, else None."""
        return self.dashboard_url() if self.dashboard_named else None

    def replica_tracking_uri(self) -> str:
        """The MLflow URI that processes on the cluster get (a Serve application's replicas); refused when
        there is none or when it carries credentials (those stay in the nodes' environment)."""
        if not self.mlflow_uri:
            raise UsageError("no MLflow tracking server: set MLFLOW_TRACKING_URI or start the local stack")
        parts = urlsplit(self.mlflow_uri)
        if parts.username or parts.password:
            raise UsageError("MLFLOW_TRACKING_URI holds credentials; give them to the cluster's nodes as "
                             "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD and use a URI without them")
        return self.mlflow_uri


def is_local_stack(address: str | None, profile: Mapping[str, Any] | None = None) -> bool:
    """Whether address, a Ray (GCS) address or a dashboard URL, is the embedded stack's own."""
    profile = settings.read_profile() if profile is None else profile
    own = {(profile.get(key) or "").rstrip("/") for key in ("ray_address", "dashboard_url")} - {""}
    return bool(address) and address.rstrip("/") in own


def _http(value: str | None) -> bool:
    return bool(value) and value.startswith(("http://", "https://"))


def _find_dashboard(explicit: str | None, environ: Mapping[str, str],
                   profile: Mapping[str, Any]) -> tuple[str | None, bool, str]:
    """(dashboard URL or None, named or not, why there is none) by the module doc's rule; environ holds
    the Ray address already resolved (RAY_ADDRESS, else the stack's)."""
    for name, value in (("--address", explicit), ("RAY_DASHBOARD_ADDRESS", environ.get("RAY_DASHBOARD_ADDRESS"))):
        if value:
            if _http(value):
                return value.rstrip("/"), True, ""
            return None, True, f"{name} {value}: expected the dashboard's URL, e.g. {DASHBOARD_EXAMPLE}"
    ray = environ.get("RAY_ADDRESS")
    if _http(ray):
        return ray.rstrip("/"), True, ""
    if ray and not is_local_stack(ray, profile):
        return None, False, (f"RAY_ADDRESS={ray} is a cluster's GCS address, not its dashboard: set RAY_DASHBOARD_"
                             f"ADDRESS={DASHBOARD_EXAMPLE} (or pass it as --address to {_ADDRESS_COMMANDS})")
    if profile.get("dashboard_url"):
        return profile["dashboard_url"].rstrip("/"), False, ""
    return None, False, (f"no Ray dashboard: set RAY_DASHBOARD_ADDRESS (or RAY_ADDRESS) to {DASHBOARD_EXAMPLE} (or "
                         f"pass it as --address to {_ADDRESS_COMMANDS}), or start the local stack (`ganray local up`)")


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


def _stack_variables(environ: Mapping[str, str], profile: Mapping[str, Any], local: bool) -> dict[str, str]:
    """What to add to environ from the stack: each only for the stack's own services, none environ sets.
    MLflow requests are kept short (``QUICK_REQUESTS``: ganray waits out an unreachable server itself)."""
    own_s3 = not (environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"))
    own_mlflow = (environ.get("MLFLOW_TRACKING_URI") or profile.get("mlflow_uri")) == profile.get("mlflow_uri")
    wanted = stack_env(settings.ganray_home(), profile, read_local_credentials(), ray=local)
    if not own_s3 or environ.get("AWS_ACCESS_KEY_ID"):  # someone else's S3, or keys of the caller's own
        wanted = {k: v for k, v in wanted.items() if not (k.startswith("AWS_") and (not own_s3 or "KEY" in k))}
    if not own_mlflow:  # the stack's login never goes to another tracking server
        wanted = {k: v for k, v in wanted.items() if not k.startswith("MLFLOW_TRACKING_")}
    if local and environ.get("RAY_AUTH_TOKEN"):
        wanted = {k: v for k, v in wanted.items() if not k.startswith("RAY_AUTH")}
    return {k: v for k, v in {**QUICK_REQUESTS, **wanted}.items() if not environ.get(k)}


def resolve_endpoints(environ: Mapping[str, str] | None = None, address: str | None = None) -> Endpoints:
    """Where Ray, its dashboard (address: --address), MLflow and object storage are, by the module doc's
    rules; env holds the stack's variables that environ (default: os.environ) lacks."""
    environ = dict(os.environ if environ is None else environ)
    profile = settings.read_profile()
    ray_address = environ.get("RAY_ADDRESS") or profile.get("ray_address") or None
    local = is_local_stack(ray_address, profile)
    env = _stack_variables(environ, profile, local)
    merged = {**environ, **env}
    dashboard, named, why = _find_dashboard(address, {**environ, "RAY_ADDRESS": ray_address or ""}, profile)
    return Endpoints(
        ray_address=ray_address,
        mlflow_uri=merged.get("MLFLOW_TRACKING_URI"),
        s3_endpoint=s3_endpoint(environ, profile),
        storage_root=settings.get("GANRAY_STORAGE_ROOT", merged) or profile.get("storage_root"),
        local=local, dashboard=dashboard, dashboard_named=named, no_dashboard=why, env=env)


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
