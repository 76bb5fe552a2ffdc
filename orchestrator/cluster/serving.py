"""``ganray serve``: the generator's Ray Serve application put on, or taken off, the current cluster.

The application (its args: a ``deploy.serve_config.ServeConfig``, the one owner of the serve
configuration) is deployed by its import path, ``deploy.app:build_app``, through the Ray dashboard's
Serve REST API (what ``serve deploy`` uses; the dashboard takes the cluster's token as
``Authorization: Bearer``, by ``tokens.ray_token``'s rule). Which dashboard, and the MLflow URI the
replicas get, are ``endpoints.resolve_endpoints``'s rules. That API replaces every application at
once, so the applications already deployed are sent back unchanged next to this one. One application
per registered model, named after it, under ``/NAME/``.

The replicas reach MLflow through ``MLFLOW_TRACKING_URI`` in the application's runtime_env
(an endpoint, no secret; a URI with credentials in it is refused) and whatever credentials
the cluster's nodes hold in their environment.

Every application has a bearer token (``POST /reload`` needs it; with ``--private``, ``/generate`` and
``/model`` too): ``--token-file``'s, or one generated once per model name under
``$GANRAY_HOME/serve/NAME.token`` (0600 from its first byte, in a 0700 folder; reused by the next
``ganray serve`` of that name, so its clients keep working). Only its sha256 goes into the args
(:func:`serve_token`); the token is never printed, logged or sent to the dashboard. Serve's HTTP
proxy binds loopback on the local stack and 0.0.0.0 elsewhere unless ``--host`` says otherwise;
:func:`reach_notice` is the line a bind beyond loopback prints.
"""
from __future__ import annotations

import ipaddress
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from deploy.loader import named_version, registry_client
from deploy.serve_config import ServeConfig, read_token
from orchestrator.cluster.endpoints import is_local_stack
from orchestrator.cluster.tokens import ray_headers, ray_token
from orchestrator.stack.private_files import private_dir, tighten, write_secret
from trainers.errors import GanrayError, UsageError
from trainers.settings import ganray_home

IMPORT_PATH = "deploy.app:build_app"
DEFAULT_PORT = 8000  # Ray Serve's
LOCAL_HOST = "127.0.0.1"
PROXY_TIMEOUT_SLACK_S = 5.0  # Serve's proxy gives up this long after the replica's request_timeout_s


class ServeError(GanrayError, RuntimeError):
    """Serve refused or failed the application; the message says what it reported."""


@dataclass(frozen=True)
class ServeRequest:
    config: ServeConfig  # what the application serves and how: its args
    port: int | None = None  # Serve's HTTP port, when this starts Serve
    host: str | None = None  # the address Serve's HTTP proxy binds, when this starts Serve

    @property
    def name(self) -> str:
        """The application's name and URL path: the model's name."""
        return self.config.model.name


class ServeApi:
    """The dashboard's Serve REST API, through Ray's own client, with the cluster's token (``tokens``)."""

    def __init__(self, address: str):
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        self.address = address
        try:
            self.client = ServeSubmissionClient(address, headers=ray_headers(ray_token(is_local_stack(address))))
        except Exception as err:  # noqa: BLE001 - connection refused, wrong address, auth
            raise ServeError(f"cannot reach the Ray dashboard at {address}: {type(err).__name__}: "
                             f"{_first_line(err)}") from None

    def details(self) -> dict[str, Any]:
        return self._call(self.client.get_serve_details)

    def deploy(self, config: dict[str, Any]) -> None:
        self._call(self.client.deploy_applications, config)

    def shutdown(self) -> None:
        self._call(self.client.delete_applications)

    def _call(self, method, *args):
        try:
            return method(*args)
        except Exception as err:  # noqa: BLE001 - the client raises RuntimeError with the response
            raise ServeError(f"Ray Serve at {self.address}: {_first_line(err)}") from None


def running(details: dict[str, Any]) -> bool:
    """Whether Serve runs on the cluster (its controller is up)."""
    return bool(details.get("controller_info"))


def serve_token(name: str, token_file: str | None = None) -> tuple[Path, str]:
    """(where the token is, the token) of application name: token_file's (tightened to 0600 if it was looser),
    or the one kept under $GANRAY_HOME/serve, generated the first time. Never print the token: print the path."""
    if token_file is not None:
        path = Path(token_file).expanduser()
        tighten(path)
        return path, read_token(path)
    path = private_dir(private_dir(ganray_home()) / "serve") / f"{name}.token"
    tighten(path)
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(32) + "\n")
    return path, read_token(path)


def current_options(details: dict[str, Any]) -> dict[str, Any]:
    """The HTTP options Serve runs with, as deploy sends them back (so Serve sees nothing to change)."""
    current = details.get("http_options") or {}
    options = {"host": current.get("host", LOCAL_HOST), "port": int(current.get("port", DEFAULT_PORT))}
    if current.get("request_timeout_s") is not None:
        options["request_timeout_s"] = current["request_timeout_s"]
    return options


def http_options(details: dict[str, Any], req: ServeRequest, local: bool) -> dict[str, Any]:
    """Serve's HTTP options: those it runs with (a different --port or --host is an error), or the ones to start
    it with (loopback on the local stack, 0.0.0.0 elsewhere, unless req.host)."""
    if running(details):
        current = current_options(details)
        have, bound = current["port"], current["host"]
        if req.port is not None and req.port != have:
            raise UsageError(f"Ray Serve already runs on this cluster with HTTP port {have}: serve there "
                             f"(--port {have}, or no --port), or stop its applications first to choose another")
        if req.host is not None and req.host != bound:
            raise UsageError(f"Ray Serve already runs on this cluster bound to {bound}: serve there (--host {bound}, "
                             "or no --host), or stop its applications first to bind another address")
        proxy_s = current.get("request_timeout_s")
        if proxy_s is not None and req.config.request_timeout_s + PROXY_TIMEOUT_SLACK_S > proxy_s:
            raise UsageError(f"Ray Serve's proxy on this cluster gives up on a request after {proxy_s:g} s: give "
                             f"--request-timeout-s {max(proxy_s - PROXY_TIMEOUT_SLACK_S, 0.5):g} or less, or stop its "
                             "applications first to start it with a longer one")
        return current
    want = req.port or DEFAULT_PORT
    if local:
        from orchestrator.stack.processes import port_free

        if not port_free(want):
            raise UsageError(f"port {want} is taken on this machine: choose another with --port")
    return {"host": req.host or (LOCAL_HOST if local else "0.0.0.0"), "port": want,
            "request_timeout_s": req.config.request_timeout_s + PROXY_TIMEOUT_SLACK_S}


def reach_notice(options: dict[str, Any], private: bool) -> str | None:
    """The line ganray serve prints when Serve's proxy listens beyond loopback (None on loopback)."""
    host = options.get("host") or LOCAL_HOST
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    needs = ("POST /reload, POST /generate and GET /model need the token" if private else
             "POST /reload needs the token; /generate, /model and the page answer anyone (--private asks the "
             "token for them too)")
    return (f"the endpoint listens on {host}:{options.get('port')}: it is reachable from the network, by anyone "
            f"who can reach that port; {needs}")


def other_apps(details: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The deployed applications other than name, as their configs (sent back unchanged)."""
    apps = []
    for app_name, app in (details.get("applications") or {}).items():
        if app_name == name:
            continue
        config = app.get("deployed_app_config")
        if not config:
            raise ServeError(f"application {app_name!r} was deployed from Python (serve.run), not from a config: "
                             "deploying through the REST API would remove it")
        apps.append(config)
    return apps


def app_config(req: ServeRequest, mlflow_uri: str) -> dict[str, Any]:
    """The application's serve config: its args are req.config.to_args(), read back by the replicas."""
    return {"name": req.name, "route_prefix": f"/{req.name}", "import_path": IMPORT_PATH,
            "args": req.config.to_args(), "runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_uri}}}


def app_url(options: dict[str, Any], dashboard: str, name: str) -> str:
    host = options.get("host") or LOCAL_HOST
    if host in ("0.0.0.0", "::", ""):
        host = urlsplit(dashboard).hostname or LOCAL_HOST
    return f"http://{host}:{options['port']}/{name}/"


def wait_running(api: ServeApi, name: str, timeout: float, not_deployed_at: float | None = None) -> None:
    """Until the application (deployed after not_deployed_at) is RUNNING; ServeError with Serve's message
    when it fails or takes too long."""
    deadline, status, message = time.time() + timeout, "NOT_STARTED", ""
    while time.time() < deadline:
        app = (api.details().get("applications") or {}).get(name) or {}
        status, message = app.get("status", "NOT_STARTED"), app.get("message") or ""
        if not_deployed_at is not None and app.get("last_deployed_time_s") == not_deployed_at:
            status = "NOT_STARTED"  # still the previous deployment's status
        elif status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ServeError(f"application {name} is {status}: {_last_lines(message)}")
        time.sleep(1.0)
    raise ServeError(f"application {name} not running after {timeout:.0f}s (status {status}) {_last_lines(message)}")


def wait_healthy(url: str, timeout: float, token: str | None = None) -> dict[str, Any]:
    """Until GET healthz answers 200 (the model is loaded); ServeError with the replica's last error otherwise
    (a private application tells it to the token only)."""
    deadline, last = time.time() + timeout, "no answer"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.time() < deadline:
        try:
            r = requests.get(url + "healthz", headers=headers, timeout=10)
            if r.status_code == 200:
                return r.json()
            last = (r.json() or {}).get("error") or f"HTTP {r.status_code}" if r.headers.get(
                "content-type", "").startswith("application/json") else f"HTTP {r.status_code}"
        except (requests.RequestException, ValueError) as err:
            last = type(err).__name__
        time.sleep(1.0)
    raise ServeError(f"{url} did not load its model in {timeout:.0f}s: {last}")


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def _last_lines(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])[-1500:]


def serve(req: ServeRequest, endpoints, timeout: float = 300.0, token: str | None = None
          ) -> tuple[str, int, dict[str, Any]]:
    """Deploys req's application, waits until its replicas have loaded the model; (URL, version, Serve's HTTP
    options). A model the registry does not have is a RegistryError (``deploy.loader``'s) before anything is
    deployed. token (never sent to Serve): to read a private application's health."""
    uri = endpoints.replica_tracking_uri()
    version = int(named_version(registry_client(uri), req.config.model).version)
    dashboard = endpoints.dashboard_url()
    api = ServeApi(dashboard)
    details = api.details()
    options = http_options(details, req, is_local_stack(dashboard))
    before = ((details.get("applications") or {}).get(req.name) or {}).get("last_deployed_time_s")
    api.deploy({"http_options": options, "applications": other_apps(details, req.name) + [app_config(req, uri)]})
    url = app_url(options, dashboard, req.name)
    try:
        wait_running(api, req.name, timeout, not_deployed_at=before)
        wait_healthy(url, timeout, token)
    except ServeError:
        remove(api, req.name)  # nothing half-deployed stays behind
        raise
    return url, version, options


def stop(name: str, endpoints, timeout: float = 120.0) -> None:
    """Removes application name (Serve itself too when it was the last one); ServeError when it is not there."""
    api = ServeApi(endpoints.dashboard_url())
    details = api.details()
    if name not in (details.get("applications") or {}):
        served = ", ".join(sorted(details.get("applications") or {})) or "none"
        raise ServeError(f"no application {name} is served on this cluster (served: {served})")
    remove(api, name, details)
    deadline = time.time() + timeout
    while name in (api.details().get("applications") or {}):
        if time.time() > deadline:
            raise ServeError(f"application {name} still there after {timeout:.0f}s")
        time.sleep(1.0)


def remove(api: ServeApi, name: str, details: dict[str, Any] | None = None) -> None:
    details = details if details is not None else api.details()
    rest = other_apps(details, name)
    if rest:
        api.deploy({"http_options": current_options(details), "applications": rest})
    elif running(details):
        api.shutdown()
