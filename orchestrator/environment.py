"""Points this process at a cluster: the environment first, then the local stack's profile.

Endpoints may be printed; credentials are only placed in the environment of this
process and its children, never printed or logged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from trainers.data.storage import ganray_home, read_local_credentials, read_profile


@dataclass(frozen=True)
class Endpoints:
    ray_address: str | None
    mlflow_uri: str | None
    s3_endpoint: str | None
    storage_root: str | None
    local: bool  # True when the endpoints come from the embedded stack


def use_cluster_environment() -> Endpoints:
    """Fills unset variables (Ray address and token, MLflow URI, S3 endpoint and keys)
    from the local stack's profile, and returns where things are."""
    profile = read_profile()
    local = not os.environ.get("RAY_ADDRESS") and bool(profile)
    if local:
        os.environ["RAY_ADDRESS"] = profile["ray_address"]
        if not os.environ.get("RAY_AUTH_TOKEN"):
            os.environ.setdefault("RAY_AUTH_MODE", "token")
            os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(ganray_home() / "ray" / "auth_token"))
    if profile.get("mlflow_uri"):
        os.environ.setdefault("MLFLOW_TRACKING_URI", profile["mlflow_uri"])
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and profile.get("s3_endpoint"):
        os.environ["AWS_ENDPOINT_URL_S3"] = profile["s3_endpoint"]
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            creds = read_local_credentials()
            if creds:
                os.environ["AWS_ACCESS_KEY_ID"] = creds["access_key"]
                os.environ["AWS_SECRET_ACCESS_KEY"] = creds["secret_key"]
        os.environ.setdefault("AWS_REGION", "us-east-1")
    return Endpoints(
        ray_address=os.environ.get("RAY_ADDRESS"),
        mlflow_uri=os.environ.get("MLFLOW_TRACKING_URI"),
        s3_endpoint=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        storage_root=os.environ.get("GANRAY_STORAGE_ROOT") or profile.get("storage_root"),
        local=local,
    )
