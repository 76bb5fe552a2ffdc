"""The Ray Serve application of a registered generator: ``deploy.app:build_app``.

Serve calls it with the ``args`` of the application's serve config (``ganray serve``, or
the RayService in k8s/): the fields of ``deploy.serve_config.ServeConfig``, read with
``ServeConfig.from_args`` (its fields say what each one means).

The replicas reach MLflow through their environment: ``MLFLOW_TRACKING_URI`` (``ganray serve``
puts it, no secret, in the application's runtime_env) and the credentials the cluster gives
its nodes. Never a credential in args: the bearer token travels as its sha256 (``token_sha256``)
or as a path on the node (``token_file``).

Serve's own bounds sit in front of the replica's (``deploy.limits``): each replica takes at most
``max_ongoing_requests()`` requests (its generate capacity and room for the routes that must
answer beside them), and each HTTP proxy queues at most ``PROXY_QUEUE_FACTOR`` times that many
for the whole application before it answers 503 with ``Retry-After`` itself.
"""
from __future__ import annotations

from typing import Any

from ray.serve.config import BackpressureConfig

from deploy.limits import RETRY_AFTER_S
from deploy.serve_config import ServeConfig
from deploy.server import GeneratorServer

PROXY_QUEUE_FACTOR = 4  # generous: the replica refuses what it cannot hold; the proxy's bound only caps memory


def build_app(args: dict[str, Any]):
    """The application for args (a ServeConfig's to_args()); ArgsError for a bad or unknown argument."""
    config = ServeConfig.from_args(args)
    ongoing = config.max_ongoing_requests()
    return GeneratorServer.options(
        num_replicas=config.replicas, max_ongoing_requests=ongoing,
        max_queued_requests=PROXY_QUEUE_FACTOR * ongoing * config.replicas,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
    ).bind(config.to_args())
