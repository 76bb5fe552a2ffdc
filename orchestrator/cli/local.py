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
@click.option("--auth/--no-auth", default=None,
              help="MLflow with its basic-auth app (the default): the admin login is generated into "
                   "$GANRAY_HOME/credentials.json (0600) and every ganray command uses it; once on, it stays on "
                   "for this GANRAY_HOME. --no-auth: without it, so that every local user can read and change "
                   "the registry (a warning says so). A stack whose MLflow already runs without it keeps "
                   "running so until `ganray local down`.")
def local_up(s3: bool, auth: bool | None) -> None:
    """Start the stack (idempotent; free ports; state under $GANRAY_HOME)."""
    from orchestrator.stack.local_stack import LocalStack

    stack = LocalStack()
    profile = stack.up(s3=s3, auth=auth)
    print_stack(stack.status())
    click.echo(f"MLflow UI: {profile['mlflow_uri']}   Ray dashboard: {profile['dashboard_url']}")
    if profile.get("mlflow_auth"):
        click.echo(f"MLflow asks for a login: user {stack.credentials()['mlflow_username']!r}, its password is "
                   f"mlflow_password in {stack.home / 'credentials.json'} (ganray commands use it themselves)")
    for line in auth_warnings(auth, bool(profile.get("mlflow_auth"))):
        click.echo(f"ganray: warning: {line}", err=True)
    if profile.get("s3_endpoint"):
        click.echo(f"ganray: warning: {S3_TRUSTS_EVERYONE.format(endpoint=profile['s3_endpoint'])}", err=True)


UNAUTHENTICATED = ("MLflow runs without authentication: any user of this machine can read every registered "
                   "generator and artifact, register versions, move aliases and stop jobs")
S3_TRUSTS_EVERYONE = ("the local S3 server ({endpoint}) checks no signatures: any user of this machine can read, "
                      "write and delete its objects (datasets, checkpoints); the keys in credentials.json protect "
                      "nothing there")


def auth_warnings(wanted: bool | None, on: bool) -> list[str]:
    """What `local up` says about MLflow's authentication, given --auth/--no-auth (wanted) and the outcome."""
    if on:
        return ["--no-auth ignored: MLflow of this GANRAY_HOME runs with authentication, and once on it stays "
                "on"] if wanted is False else []
    if wanted is False:
        return [f"{UNAUTHENTICATED} (--no-auth)"]
    return [f"{UNAUTHENTICATED}, as it was started; to switch authentication on: `ganray local down`, then "
            f"`ganray local up`"]


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
    elif p.get("mlflow_uri"):
        click.echo("  mlflow  without authentication (every local user can read and change it)")
    if p.get("storage_root"):
        note = (" (moto S3 server: objects live in memory until `local down`; it checks no signatures)"
                if p.get("s3_endpoint") else " (a folder)")
        click.echo(f"  storage {p['storage_root']}{note}")


COMMANDS = [local]
