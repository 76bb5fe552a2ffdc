"""The credentials a command sends to the cluster: the Ray token for a dashboard, the MLflow login check.

The Ray token for a dashboard is ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``,
else the embedded stack's token file when the dashboard is the stack's own, else Ray's
``~/.ray/auth_token``. It goes into one ``Authorization: Bearer`` header (:func:`ray_headers`)
and nowhere else: not in an error, a log line or a job's runtime env.

:func:`check_mlflow_login` asks the tracking server once whether it takes the login in the
environment (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), so that a refusal is
one clear error instead of a failure deep inside a command. The password is never named.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping

from trainers import settings
from trainers.errors import GanrayError


def ray_token(stack_dashboard: bool, environ: Mapping[str, str] | None = None) -> str | None:
    """The Ray token (see the module doc); stack_dashboard: the dashboard is the embedded stack's
    (``endpoints.is_local_stack``), whose token file is then tried too. None when there is none. Never print it."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    files = [environ.get("RAY_AUTH_TOKEN_PATH")]
    if stack_dashboard:
        files.append(str(settings.ganray_home() / "ray" / "auth_token"))
    files.append(str(Path.home() / ".ray" / "auth_token"))
    for f in files:
        with contextlib.suppress(OSError):
            if f and Path(f).is_file() and Path(f).read_text().strip():
                return Path(f).read_text().strip()
    return None


def ray_headers(token: str | None) -> dict[str, str]:
    """The one header that carries the Ray token ({} without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


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
