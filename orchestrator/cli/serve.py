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
@click.option("--stop", "stop_name", metavar="MODEL", help="Stop the application of MODEL (NAME or NAME@ALIAS).")
def serve_cmd(model: str | None, port: int | None, replicas: int, poll_s: float, stop_name: str | None) -> None:
    """Serve MODEL (NAME@ALIAS, following the alias, or NAME/VERSION) on the current cluster.

    Prints the application's URL as the last line and exits; the application runs until
    `ganray serve --stop NAME` or the cluster goes. Endpoints: GET / (a page), POST /generate,
    GET /model, GET /healthz, POST /reload.
    """
    from orchestrator.cluster import serving
    from orchestrator.cli.common import stdout_to_stderr
    from orchestrator.cluster.endpoints import resolve_endpoints
    from trainers.errors import UsageError

    if bool(model) == bool(stop_name):
        raise UsageError("give MODEL to serve, or --stop MODEL (not both)")
    endpoints = resolve_endpoints()
    if stop_name:
        name = serving.parse_serve_ref(stop_name).name if ("@" in stop_name or "/" in stop_name) else stop_name
        with stdout_to_stderr():
            serving.stop(name, endpoints)
        click.echo(f"stopped {name}")
        return
    req = serving.parse_serve_ref(model)
    req = serving.ServeRequest(req.name, req.model, port=port, replicas=replicas, poll_s=poll_s)
    with stdout_to_stderr():
        url, version = serving.serve(req, endpoints)
    click.echo(f"serving {req.model} (version {version}); stop with: ganray serve --stop {req.name}", err=True)
    click.echo(url)


COMMANDS = [serve_cmd]
