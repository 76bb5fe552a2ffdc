"""The embedded stack's private files: its folders, its secrets and MLflow's auth configuration.

- ``$GANRAY_HOME`` and its ``mlflow/``, ``storage/``, ``logs/`` and ``ray/`` are 0700; an
  existing one is tightened to 0700; one owned by another user (or a symlink) is refused.
- ``ray/auth_token`` and ``credentials.json`` are 0600 from their first byte: written to a
  new file opened ``O_CREAT | O_EXCL`` with mode 0600, then renamed into place. An existing
  one with a looser mode is tightened to 0600 (and the tightening logged); one owned by
  another user is refused.
- ``credentials.json`` holds the S3 server's keys (``access_key``, ``secret_key``) and, for a
  stack whose MLflow runs with authentication (the default), MLflow's admin login
  (``mlflow_username``, ``mlflow_password``) and the Flask secret of its auth app
  (``mlflow_flask_secret``).
- The Ray temp dir is made 0700 before Ray starts; one that exists with another owner (or as
  a symlink) is refused.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from trainers.errors import GanrayError

log = logging.getLogger("ganray.stack")
MLFLOW_ADMIN = "ganray"
AUTH_CACHE_S = 300


class PrivateFileError(GanrayError, PermissionError):
    """A stack file or folder that is not ours to keep private."""


def _own(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise PrivateFileError(f"{path} is a symlink; refusing to keep the stack's secrets there")
    if st.st_uid != os.getuid():
        raise PrivateFileError(f"{path} belongs to another user (uid {st.st_uid}); refusing to use it "
                               f"(remove it, or set GANRAY_HOME to a folder of your own)")


def private_dir(path: Path) -> Path:
    """path as a folder only its owner can enter (made 0700, or an existing one of ours tightened)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    _own(path, st)
    if not stat.S_ISDIR(st.st_mode):
        raise PrivateFileError(f"{path} is not a folder")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def tighten(path: Path) -> bool:
    """An existing secret file of ours made 0600 (True when it was looser); PrivateFileError if not ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    _own(path, st)
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others (mode %o); tightened to 0600", path, stat.S_IMODE(st.st_mode))
        return True
    return False


def write_secret(path: Path, text: str) -> None:
    """Writes text to path with mode 0600 from the first byte (a new file, then renamed over path)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_ray_token(home: Path) -> Path:
    token = private_dir(Path(home) / "ray") / "auth_token"
    tighten(token)
    if not token.exists():
        write_secret(token, secrets.token_hex(32))
    return token


def read_credentials(home: Path) -> dict[str, str]:
    """The stack's credentials ({} when none yet); the file is tightened first if it must be."""
    path = Path(home) / "credentials.json"
    tighten(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def ensure_credentials(home: Path, s3: bool, auth: bool) -> dict[str, str]:
    """The stack's credentials, with the S3 keys (s3) and MLflow's admin login (auth) generated if missing."""
    creds = read_credentials(home)
    wanted: dict[str, Any] = {}
    if s3 and "access_key" not in creds:
        wanted.update(access_key="ganray" + secrets.token_hex(6), secret_key=secrets.token_urlsafe(24))
    if auth and "mlflow_password" not in creds:
        wanted.update(mlflow_username=MLFLOW_ADMIN, mlflow_password=secrets.token_urlsafe(24),
                      mlflow_flask_secret=secrets.token_hex(32))
    if wanted:
        creds = {**creds, **wanted}
        write_secret(Path(home) / "credentials.json", json.dumps(creds, indent=2))
    return creds


def auth_config(home: Path) -> Path:
    """MLflow's basic-auth configuration for the stack (its own SQLite user store under mlflow/); no
    password in it: the admin's is given once, in the environment of the server's first start.
    A login the server accepted is remembered for AUTH_CACHE_S (keyed by an HMAC of the password
    with a per-process key): without it every request pays a scrypt hash (~0.1-0.5 s a request
    here); the cost is that a changed or removed login keeps working that long."""
    root = Path(home) / "mlflow"
    path = root / "basic_auth.ini"
    write_secret(path, "[mlflow]\n"
                       "default_permission = NO_PERMISSIONS\n"
                       f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                       f"admin_username = {MLFLOW_ADMIN}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                       f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n")
    return path


def auth_env(home: Path, creds: dict[str, str]) -> dict[str, str]:
    """The environment of an MLflow server with the stack's auth (never its command line)."""
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(auth_config(home)), "MLFLOW_FLASK_SERVER_SECRET_KEY":
           creds["mlflow_flask_secret"]}
    if not (Path(home) / "mlflow" / "basic_auth.db").exists():  # first start: the admin is created with it
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = creds["mlflow_password"]
    return env


def private_ray_temp_dir(path: str) -> str:
    """Ray's temp dir, made 0700 before Ray starts; PrivateFileError when it exists and is not ours."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        _own(Path(path), st)
        if not stat.S_ISDIR(st.st_mode):
            raise PrivateFileError(f"Ray temp dir {path} is not a folder") from None
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
    return path
