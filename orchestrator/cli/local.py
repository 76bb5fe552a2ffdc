"""``ganray local up|down|status``: the embedded stack."""
from __future__ import annotations

import json

import click


@click.group()
def local() -> None:
    """The embedded stack: a local Ray head, an MLflow server and object storage."""


@local.command("up")
@click.option("--s3", is_flag=True, help="Also start moto's S3 server on loopback and point the defaults at it "
                                         "(it keeps objects in memory only while it runs).")
@click.option("--auth", is_flag=True, help="Run MLflow with its basic-auth app; the admin login is generated into "
                                           "$GANRAY_HOME/credentials.json (0600) and every ganray command uses it. "
                                           "Once on, it stays on for this GANRAY_HOME.")
def local_up(s3: bool, auth: bool) -> None:
    """Start the stack (idempotent; free ports; state under $GANRAY_HOME)."""
    from orchestrator.stack.local_stack import LocalStack

    stack = LocalStack()
    profile = stack.up(s3=s3, auth=auth)
    print_stack(stack.status())
    click.echo(f"MLflow UI: {profile['mlflow_uri']}   Ray dashboard: {profile['dashboard_url']}")
    if profile.get("mlflow_auth"):
        click.echo(f"MLflow asks for a login: user {stack.credentials()['mlflow_username']!r}, its password is "
                   f"mlflow_password in {stack.home / 'credentials.json'} (ganray commands use it themselves)")


@local.command("down")
def local_down() -> None:
    """Stop exactly the processes the stack started (registered models are kept)."""
    from orchestrator.stack.local_stack import LocalStack

    stopped = LocalStack().down()
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@local.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def local_status(as_json: bool) -> None:
    """Say what runs where."""
    from orchestrator.stack.local_stack import LocalStack

    status = LocalStack().status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        print_stack(status)


def print_stack(status: dict) -> None:
    click.echo(f"GANRAY_HOME: {status['home']}")
    if not status["services"]:
        click.echo("  no services (run `ganray local up`)")
    for name, s in status["services"].items():
        click.echo(f"  {name:7s} {'running' if s['alive'] else 'stopped':8s} pid {s['pid']:<7d} port {s['port']}")
    p = status.get("profile") or {}
    if p.get("mlflow_auth"):
        click.echo("  mlflow  with authentication (login in credentials.json)")
    if p.get("storage_root"):
        note = " (moto S3 server: objects live in memory until `local down`)" if p.get("s3_endpoint") else " (a folder)"
        click.echo(f"  storage {p['storage_root']}{note}")


COMMANDS = [local]
