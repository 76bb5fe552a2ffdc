"""``ganray run`` and ``ganray status``: run a JobSpec; see every job's state from its MLflow run (and, with
``--address``, its Ray job's state on a cluster)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator import tracking_server

from orchestrator.cli.common import stdout_to_stderr
from trainers.errors import GanrayError


@click.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field, e.g. train.steps=100.")
@click.option("--fresh", is_flag=True, help="Start the job name over (its old run is kept but no longer resumed).")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Also write the summary to this file.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def run_cmd(spec_path: str, overrides: tuple[str, ...], fresh: bool, summary_json: str | None, quiet: bool) -> None:
    """Run SPEC on the current cluster; the same name resumes. Prints the summary JSON on stdout.

    Ctrl-C writes a checkpoint and exits (status 130); run again to resume.
    """
    from orchestrator.job.driver import run_job
    from orchestrator.job.spec_file import load_spec

    spec = load_spec(spec_path, list(overrides))
    with stdout_to_stderr():
        summary = run_job(spec, fresh=fresh, progress=not quiet)
    text = json.dumps(summary, indent=2)
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(text + "\n")
    click.echo(text)
    if summary.get("state") == "stopped":
        click.echo(f"ganray: stopped at step {summary['steps']}; run the same spec again to resume", err=True)
        sys.stdout.flush()
        from orchestrator.cluster.job_api import stop_own_submission

        stop_own_submission()  # a submitted driver: Ray records STOPPED (its stop ends this process, status 0)
        sys.exit(130)


def job_statuses(name: str | None) -> list[dict[str, Any]]:
    """The status of one job (or of all) from the tracking server; this host's cached records, with a
    warning, when the server cannot be reached."""
    from orchestrator.job import host_record
    from orchestrator.job import runs
    from orchestrator.cluster.endpoints import resolve_endpoints
    from orchestrator.job.lifecycle import job_status

    try:
        client = tracking_server.client(resolve_endpoints().mlflow_uri)
        found = [runs.find_run(client, name)] if name else runs.list_runs(client)
        return [job_status(r) for r in found if r is not None]
    except tracking_server.TrackingError as err:
        click.echo(f"ganray: warning: {err}; showing this host's cached records", err=True)
    fields = ("name", "state", "step", "total_steps", "checkpoint", "run_id", "preemptions", "failures")
    records = [r for r in host_record.list_records() if name is None or r["name"] == name]
    return [{k: r.get(k, 0 if k in ("step", "total_steps", "preemptions", "failures") else None) for k in fields}
            for r in records]


def with_cluster(statuses: list[dict[str, Any]], name: str | None, address: str | None) -> list[dict[str, Any]]:
    """Statuses with `ray_status` (and `submission_id`) of each name's latest submission, when --address,
    RAY_DASHBOARD_ADDRESS or an http(s) RAY_ADDRESS names a cluster's dashboard; as they are otherwise."""
    from orchestrator.cluster.endpoints import resolve_endpoints
    from orchestrator.cluster.job_api import JobApi

    url = resolve_endpoints(address=address).named_dashboard()
    if url is None:
        return statuses
    from orchestrator.cluster.submission import with_ray_status

    return with_ray_status(statuses, JobApi(url).submissions(name), name)


@click.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: one object for NAME, else a list.")
@click.option("--address", metavar="URL", help="A cluster's dashboard, http://HEAD:8265 (or RAY_DASHBOARD_ADDRESS "
              "or RAY_ADDRESS set to it): "
              "show each job's Ray state (ray_status) beside its training state.")
def status_cmd(name: str | None, as_json: bool, address: str | None) -> None:
    """Jobs and their state, step and last checkpoint, as the tracking server records them."""
    statuses = with_cluster(job_statuses(name), name, address)
    if name and not statuses:
        raise GanrayError(f"no job named {name!r}")
    if as_json:
        click.echo(json.dumps(statuses[0] if name else statuses, indent=2))
        return
    if not statuses:
        click.echo("no jobs yet")
    for s in statuses:
        ray = f"  ray {s['ray_status'] or '-'}" if "ray_status" in s else ""
        click.echo(f"{s['name']:24s} {s['state'] or '-':11s} step {s['step']}/{s['total_steps']}  "
                   f"preemptions {s['preemptions']}  failures {s['failures']}  "
                   f"checkpoint {s['checkpoint'] or '-'}{ray}")


COMMANDS = [run_cmd, status_cmd]
