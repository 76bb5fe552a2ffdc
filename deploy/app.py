"""The Ray Serve application of a registered generator: ``deploy.app:build_app``.

Serve calls it with the ``args`` of the application's serve config (``ganray serve``, or
the RayService in k8s/): the fields of ``deploy.serve_config.ServeConfig``, read with
``ServeConfig.from_args`` (its fields say what each one means).

The replicas reach MLflow through their environment: ``MLFLOW_TRACKING_URI`` (``ganray serve``
puts it, no secret, in the application's runtime_env) and the credentials the cluster gives
its nodes. Never a credential in args.
"""
from __future__ import annotations

from typing import Any

from deploy.serve_config import ServeConfig
from deploy.server import GeneratorServer


def build_app(args: dict[str, Any]):
    """The application for args (a ServeConfig's to_args()); ArgsError for a bad or unknown argument."""
    config = ServeConfig.from_args(args)
    return GeneratorServer.options(
        num_replicas=config.replicas, max_ongoing_requests=config.max_ongoing_requests(),
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
    ).bind(config.to_args())
