"""``ganray serve``: a registered generator behind HTTP, as a Ray Serve application on the cluster."""
from __future__ import annotations

import click


@click.command("serve")
@click.argument("model", required=False)
@click.option("--port", type=click.IntRange(1, 65535),
              help="Serve's HTTP port when this starts Serve on the cluster (default 8000); an error when "
                   "Serve already runs on another.")
@click.option("--replicas", type=click.IntRange(1, 64), default=1, show_default=True, help="Replicas of the model.")
@click.option("--poll-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="How often the replicas check the alias (POST /reload checks at once).")
@click.option("--stop", "stop_name", metavar="MODEL", help="Stop the application of MODEL (NAME, or NAME@ALIAS ...).")
def serve_cmd(model: str | None, port: int | None, replicas: int, poll_s: float, stop_name: str | None) -> None:
    """Serve MODEL (NAME@ALIAS, following the alias, or NAME/VERSION) on the current cluster.

    Prints the application's URL as the last line and exits; the application runs until
    `ganray serve --stop NAME` or the cluster goes. Endpoints: GET / (a page), POST /generate,
    GET /model, GET /healthz, POST /reload.
    """
    from deploy.serve_config import ServeConfig
    from orchestrator.cli.common import stdout_to_stderr
    from orchestrator.cluster import serving
    from orchestrator.cluster.endpoints import resolve_endpoints
    from trainers.errors import UsageError
    from trainers.model_ref import parse_ref

    if (model is None) == (stop_name is None):
        raise UsageError("give MODEL to serve, or --stop MODEL (not both)")
    stopping = stop_name is not None
    ref = parse_ref(stop_name if stopping else model, need_version=not stopping, version_option=False)
    endpoints = resolve_endpoints()
    if stopping:
        with stdout_to_stderr():
            serving.stop(ref.name, endpoints)
        click.echo(f"stopped {ref.name}")
        return
    req = serving.ServeRequest(ServeConfig(ref, poll_s=poll_s, replicas=replicas), port=port)
    with stdout_to_stderr():
        url, version = serving.serve(req, endpoints)
    click.echo(f"serving {ref} (version {version}); stop with: ganray serve --stop {req.name}", err=True)
    click.echo(url)


COMMANDS = [serve_cmd]
