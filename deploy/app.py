"""The Ray Serve application of a registered generator: ``deploy.app:build_app``.

Serve calls it with the ``args`` of the application's serve config (``ganray serve``, or
the RayService in k8s/):

- ``model``: ``NAME@ALIAS`` (the replicas follow the alias) or ``NAME/VERSION`` (pinned);
- ``poll_s`` (10): how often a replica checks the alias; ``POST /reload`` checks at once;
- ``max_batch_size`` (16), ``batch_wait_s`` (0.01): Serve's request batching per replica;
- ``replicas`` (1), ``num_cpus`` (1), ``num_gpus`` (0): per replica (a GPU replica samples on cuda);
- ``rows_per_pass`` (64): the most input rows one forward pass takes.

The replicas reach MLflow through their environment: ``MLFLOW_TRACKING_URI`` (``ganray serve``
puts it, no secret, in the application's runtime_env) and the credentials the cluster gives
its nodes. Never a credential in args.
"""
from __future__ import annotations

from typing import Any

from deploy.server import GeneratorServer
from deploy.settings import ServeSettings


def build_app(args: dict[str, Any]):
    """The application for args (see the module's doc); ArgsError for a bad or unknown argument."""
    settings = ServeSettings.from_dict(args)
    return GeneratorServer.options(
        num_replicas=settings.replicas, max_ongoing_requests=settings.max_ongoing_requests(),
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
    ).bind(settings.to_dict())
