"""``ganray submit|logs|stop|list``: jobs on a Ray cluster through its dashboard (Ray's Job API).

Each takes ``--address http://HEAD:8265`` (default: ``RAY_DASHBOARD_ADDRESS``, else ``RAY_ADDRESS``
when it is an http(s) URL, else the embedded stack's dashboard: ``cluster/endpoints.py``) and the Ray
token from ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``; ``submit`` and ``stop`` also use the tracking server
(``MLFLOW_TRACKING_URI``). ``ganray status --address`` shows Ray's state beside the training state.
"""
from __future__ import annotations

import json
import time

import click

from trainers.errors import GanrayError, UsageError

ADDRESS_HELP = ("The cluster's dashboard, http://HEAD:8265 (default: RAY_DASHBOARD_ADDRESS, else RAY_ADDRESS "
                "when it is a URL, else the local stack's).")


def address_option(f):
    return click.option("--address", metavar="URL", help=ADDRESS_HELP)(f)


def tracking_client():
    """A client of the tracking server, or None when none is configured."""
    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import resolve_endpoints

    uri = resolve_endpoints().mlflow_uri
    return tracking_server.client(uri) if uri else None


@click.command("submit")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a spec field.")
@address_option
@click.option("--working-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Ship DIR as the job's working dir (development: its code runs on the cluster).")
@click.option("--replace", is_flag=True,
              help="A changed spec under a running or existing name: stop it with a checkpoint, start the name over.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="With --replace: seconds to wait for the running job's checkpoint before stopping it at once.")
def submit_cmd(spec_path: str, overrides: tuple[str, ...], address: str | None, working_dir: str | None,
               replace: bool, timeout: float) -> None:
    """Run SPEC on the cluster as a Ray job (`ganray run` there). Prints the submission id last.

    The same spec again prints the id of its pending, running or succeeded submission and submits
    nothing; after a stop or a failure it submits the next attempt, which resumes from the checkpoint.
    """
    from orchestrator.cluster import submission
    from orchestrator.cluster.job_api import JobApi
    from orchestrator.job.spec_file import load_spec

    spec = load_spec(spec_path, list(overrides))
    api = JobApi.connect(address)
    done = submission.submit(api, spec, tracking_client(), replace=replace, working_dir=working_dir, timeout=timeout,
                             say=lambda line: click.echo(f"ganray: {line}", err=True))
    verb = "submitted" if done.submitted else "not submitted"
    click.echo(f"ganray: {spec.name}: {verb} ({done.why}) to {api.address}", err=True)
    click.echo(done.submission_id)


def _latest(api, name: str):
    sub = api.latest(name)
    if sub is None:
        raise GanrayError(f"no submission of job {name!r} on {api.address}")
    return sub


@click.command("logs")
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@address_option
def logs_cmd(name: str, follow: bool, address: str | None) -> None:
    """The log of job NAME's latest submission (its driver's output)."""
    from orchestrator.cluster.job_api import JobApi

    api = JobApi.connect(address)
    sub = _latest(api, name)
    chunks = api.follow(sub.id) if follow else [api.logs(sub.id)]
    for chunk in chunks:
        click.echo(chunk, nl=False)


@click.command("stop")
@click.argument("name")
@click.option("--now", is_flag=True, help="Stop at once, without a checkpoint.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the checkpoint before stopping at once.")
@address_option
def stop_cmd(name: str, now: bool, timeout: float, address: str | None) -> None:
    """Stop job NAME's running submission: a checkpoint first (run `ganray submit` again to resume)."""
    from orchestrator.cluster import submission
    from orchestrator.cluster.job_api import JobApi

    api = JobApi.connect(address)
    sub = _latest(api, name)
    if not sub.active:
        click.echo(f"{name}: submission {sub.id} is {sub.status}; nothing to stop")
        return
    client = tracking_client()
    if client is None and not now:
        raise UsageError("a checkpointed stop goes through the tracking server: set MLFLOW_TRACKING_URI, "
                         "or stop at once with --now")
    status = submission.stop(api, client, name, sub, timeout, now, say=lambda line: click.echo(f"ganray: {line}", err=True))
    state = _training_state(client, name)
    click.echo(f"{name}: submission {sub.id} {status}" + (f", training {state}" if state else ""))


def _training_state(client, name: str) -> str | None:
    if client is None:
        return None
    from orchestrator.job import runs
    from orchestrator.job.lifecycle import job_status

    run = runs.find_run(client, name)
    if run is None:
        return None
    s = job_status(run)
    return f"{s['state']} at step {s['step']}" + (f", checkpoint {s['checkpoint']}" if s["checkpoint"] else "")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as a JSON list.")
@address_option
def list_cmd(as_json: bool, address: str | None) -> None:
    """Every ganray submission on the cluster, oldest first: id, job name, Ray state, times."""
    from orchestrator.cluster.job_api import JobApi

    subs = JobApi.connect(address).submissions()
    rows = [{"submission_id": s.id, "name": s.name, "ray_status": s.status, "start_time": _when(s.start_time),
             "end_time": _when(s.end_time)} for s in subs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no submissions yet")
    for r in rows:
        click.echo(f"{r['submission_id']:44s} {r['name']:24s} {r['ray_status']:10s} {r['start_time'] or '-'}  "
                   f"{r['end_time'] or '-'}")


def _when(ms: int | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else None


COMMANDS = [submit_cmd, logs_cmd, stop_cmd, list_cmd]
