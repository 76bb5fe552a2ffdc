"""Where object storage is and how to reach it, without naming secrets.

Endpoints and credentials come from the environment first (the standard
``AWS_*`` variables that boto3, s3fs and pyarrow read) and then from the local
stack's profile in ``$GANRAY_HOME``. Nothing here logs a key or a secret.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import fsspec

from trainers.settings import env_or_profile, ganray_home, read_profile

__all__ = ["ganray_home", "read_profile", "read_local_credentials", "s3_endpoint", "storage_options_for",
           "open_filesystem", "join"]


def read_local_credentials() -> dict[str, str]:
    """The local S3 server's keys from ``$GANRAY_HOME/credentials.json`` ({} if none)."""
    try:
        return json.loads((ganray_home() / "credentials.json").read_text())
    except FileNotFoundError:
        return {}


def s3_endpoint(environ: Mapping[str, str] | None = None, profile: Mapping[str, Any] | None = None) -> str | None:
    """The S3 endpoint URL to use: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, then the profile's (of this
    process and the local stack unless environ and profile are given). The one rule: the CLI's resolver uses it."""
    return env_or_profile(("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), "s3_endpoint", environ, profile)


def storage_options_for(url: str) -> dict[str, Any]:
    """fsspec storage options for url: an endpoint and keys for ``s3://``, nothing otherwise."""
    if not str(url).startswith(("s3://", "s3a://")):
        return {}
    opts: dict[str, Any] = {}
    endpoint = s3_endpoint()
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        creds = read_local_credentials()
        if creds and endpoint and endpoint == read_profile().get("s3_endpoint"):
            opts["key"], opts["secret"] = creds["access_key"], creds["secret_key"]
    # Short retries belong to the reader; here only a bounded connect time.
    opts.setdefault("config_kwargs", {"connect_timeout": 10, "read_timeout": 60,
                                      "retries": {"max_attempts": 5, "mode": "standard"}})
    return opts


def open_filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(filesystem, path) for an fsspec URL or a local path; a fresh client per call.

    s3fs is not fork-safe, so callers create one inside each process that uses it.
    """
    opts = storage_options_for(url) if storage_options is None else storage_options
    fs, path = fsspec.core.url_to_fs(str(url), **opts)
    if str(url).startswith(("s3://", "s3a://")):
        fs.invalidate_cache()
    return fs, path


def join(url: str, *parts: str) -> str:
    """url joined with parts by '/', whatever the scheme."""
    return "/".join([str(url).rstrip("/"), *[p.strip("/") for p in parts]])
