"""``ganray serve``: a registered generator behind HTTP, as a Ray Serve application on the cluster."""
from __future__ import annotations

from dataclasses import fields

import click

from deploy.serve_config import ServeConfig

DEFAULT = {f.name: f.default for f in fields(ServeConfig)}  # the serve configuration's own defaults


@click.command("serve")
@click.argument("model", required=False)
@click.option("--port", type=click.IntRange(1, 65535),
              help="Serve's HTTP port when this starts Serve on the cluster (default 8000); an error when "
                   "Serve already runs on another.")
@click.option("--host", help="The address Serve's HTTP proxy binds when this starts Serve (default: 127.0.0.1 on "
                             "the local stack, 0.0.0.0 on other clusters); an error when Serve already runs bound "
                             "to another. A bind beyond loopback prints that the endpoint is reachable from the "
                             "network.")
@click.option("--replicas", type=click.IntRange(1, 64), default=DEFAULT["replicas"], show_default=True,
              help="Replicas of the model.")
@click.option("--poll-s", type=click.FloatRange(min=0.1), default=DEFAULT["poll_s"], show_default=True,
              help="How often the replicas check the alias (POST /reload checks at once).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="A file holding the endpoint's bearer token "
              "(default: one generated once under $GANRAY_HOME/serve/NAME.token, 0600, and reused). Only its "
              "sha256 is sent to the cluster.")
@click.option("--private", is_flag=True, help="POST /generate and GET /model need the token too (the page asks "
                                              "for it); POST /reload always does.")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="A web origin (scheme://host[:port]) allowed to call the endpoint from a browser, beside its "
                   "own; repeatable. Other origins get 403.")
@click.option("--max-batch-size", type=click.IntRange(1, 1024), default=DEFAULT["max_batch_size"], show_default=True,
              help="Requests batched into one forward pass per replica.")
@click.option("--max-queued-requests", type=click.IntRange(0, 100000), default=DEFAULT["max_queued_requests"],
              show_default=True,
              help="Generate requests a replica holds beyond a running batch; more get 503 with Retry-After.")
@click.option("--request-timeout-s", type=click.FloatRange(min=0.5), default=DEFAULT["request_timeout_s"],
              show_default=True,
              help="A generate request not answered by then gets 503 with Retry-After.")
@click.option("--max-request-pixels", type=click.IntRange(min=1), default=DEFAULT["max_request_pixels"],
              show_default=True,
              help="The most pixels (n x height x width) one request may ask for; more get 400.")
@click.option("--reload-min-interval-s", type=click.FloatRange(min=0.0), default=DEFAULT["reload_min_interval_s"],
              show_default=True,
              help="POST /reload at most once per interval per replica; sooner gets 429.")
@click.option("--stop", "stop_name", metavar="MODEL", help="Stop the application of MODEL (NAME, or NAME@ALIAS ...).")
def serve_cmd(model: str | None, stop_name: str | None, port: int | None, host: str | None, token_file: str | None,
              **settings) -> None:
    """Serve MODEL (NAME@ALIAS, following the alias, or NAME/VERSION) on the current cluster.

    Prints where the bearer token is (never the token) and the application's URL as the last
    line, and exits; the application runs until `ganray serve --stop NAME` or the cluster goes.
    Endpoints: GET / (a page), POST /generate, GET /model, GET /healthz, POST /reload (needs
    the token: Authorization: Bearer TOKEN). POST bodies are JSON (Content-Type:
    application/json); requests from other web origins are refused unless --allow-origin.
    """
    from deploy.serve_config import token_digest
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
    token_path, token = serving.serve_token(ref.name, token_file)
    config = ServeConfig(ref, token_sha256=token_digest(token), **settings)
    req = serving.ServeRequest(config, port=port, host=host)
    with stdout_to_stderr():
        url, version, options = serving.serve(req, endpoints, token=token)
    click.echo(f"serving {ref} (version {version}); stop with: ganray serve --stop {req.name}", err=True)
    click.echo(f"token: {token_path} (send it as Authorization: Bearer <token>; POST /reload needs it"
               f"{', and /generate and /model too (--private)' if config.private else ''})", err=True)
    notice = serving.reach_notice(options, config.private)
    if notice:
        click.echo(notice, err=True)
    click.echo(url)


COMMANDS = [serve_cmd]
