"""The ``ganray`` command line."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"ganray: error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Sends everything written to fd 1 (Ray, MLflow, C++ logs) to stderr, so stdout carries only results."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Train GANs on Ray with data streamed from object storage and runs kept in MLflow.

    Endpoints come from the environment (RAY_ADDRESS, MLFLOW_TRACKING_URI, AWS_*)
    or from the embedded stack that `ganray local up` starts under $GANRAY_HOME.
    """
    if ctx.invoked_subcommand != "local":
        # Before anything imports Ray: its token loader reads the environment once.
        from orchestrator.environment import use_cluster_environment

        use_cluster_environment()


# -- local stack -----------------------------------------------------------
@main.group()
def local() -> None:
    """The embedded stack: a local Ray head, an MLflow server and object storage."""


@local.command("up")
@click.option("--s3", is_flag=True, help="Also start moto's S3 server on loopback and point the defaults at it "
                                         "(it keeps objects in memory only while it runs).")
def local_up(s3: bool) -> None:
    """Start the stack (idempotent; free ports; state under $GANRAY_HOME)."""
    from orchestrator.stack import LocalStack, StackError

    stack = LocalStack()
    try:
        profile = stack.up(s3=s3)
    except StackError as err:
        _fail(str(err), 1)
    _print_stack(stack.status())
    click.echo(f"MLflow UI: {profile['mlflow_uri']}   Ray dashboard: {profile['dashboard_url']}")


@local.command("down")
def local_down() -> None:
    """Stop exactly the processes the stack started (registered models are kept)."""
    from orchestrator.stack import LocalStack

    stopped = LocalStack().down()
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@local.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def local_status(as_json: bool) -> None:
    """Say what runs where."""
    from orchestrator.stack import LocalStack

    status = LocalStack().status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_stack(status)


def _print_stack(status: dict) -> None:
    click.echo(f"GANRAY_HOME: {status['home']}")
    if not status["services"]:
        click.echo("  no services (run `ganray local up`)")
    for name, s in status["services"].items():
        click.echo(f"  {name:7s} {'running' if s['alive'] else 'stopped':8s} pid {s['pid']:<7d} port {s['port']}")
    p = status.get("profile") or {}
    if p.get("storage_root"):
        note = " (moto S3 server: objects live in memory until `local down`)" if p.get("s3_endpoint") else " (a folder)"
        click.echo(f"  storage {p['storage_root']}{note}")


# -- jobs --------------------------------------------------------------------
@main.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a spec field, e.g. train.steps=100.")
@click.option("--fresh", is_flag=True, help="Start the job name over (its old run is kept but no longer resumed).")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Also write the summary to this file.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def run_cmd(spec_path: str, overrides: tuple[str, ...], fresh: bool, summary_json: str | None, quiet: bool) -> None:
    """Run SPEC on the current cluster; the same name resumes. Prints the summary JSON on stdout.

    Ctrl-C writes a checkpoint and exits (status 130); run again to resume.
    """
    from orchestrator.driver import JobError, run_job
    from orchestrator.jobs import JobBusyError
    from orchestrator.spec import SpecError, load_spec
    from orchestrator.tracking import TrackingError
    from trainers.data.stream import DataError

    try:
        spec = load_spec(spec_path, list(overrides))
    except SpecError as err:
        _fail(str(err))
    try:
        with _stdout_to_stderr():
            summary = run_job(spec, fresh=fresh, progress=not quiet)
    except (JobError, JobBusyError, TrackingError, DataError) as err:
        _fail(str(err), 1)
    text = json.dumps(summary, indent=2)
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(text + "\n")
    click.echo(text)
    if summary.get("state") == "stopped":
        click.echo(f"ganray: stopped at step {summary['steps']}; run the same spec again to resume", err=True)
        sys.exit(130)


@main.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status_cmd(name: str | None, as_json: bool) -> None:
    """The jobs this stack knows: state, step, last checkpoint."""
    from orchestrator import jobs

    records = [r for r in jobs.list_records() if name is None or r["name"] == name]
    if name and not records:
        _fail(f"no job named {name!r}", 1)
    if as_json:
        click.echo(json.dumps(records if name is None else records[0], indent=2))
        return
    if not records:
        click.echo("no jobs yet")
    for r in records:
        click.echo(f"{r['name']:24s} {r.get('state', '?'):11s} step {r.get('step', 0)}/{r.get('total_steps', '?')}  "
                   f"preemptions {r.get('preemptions', 0)}  failures {r.get('failures', 0)}  "
                   f"checkpoint {r.get('checkpoint') or '-'}")


# -- data --------------------------------------------------------------------
@main.group()
def data() -> None:
    """Datasets: the built-in synthetic faces, and ingest into shards."""


@data.command("synth")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Number of images.")
@click.option("--resolution", type=int, default=64, show_default=True, help="Image size (power of two).")
@click.option("--seed", type=int, default=0, show_default=True)
def data_synth(dest: str, n: int, resolution: int, seed: int) -> None:
    """Draw a deterministic dataset of tagged anime-style faces into DEST (PNGs + labels.csv)."""
    from trainers.data.synth import write_synthetic_dataset

    try:
        labels = write_synthetic_dataset(dest, n, resolution, seed)
    except ValueError as err:
        _fail(str(err))
    click.echo(f"wrote {n} images and {labels}")


@data.command("ingest")
@click.argument("src")
@click.argument("dest")
@click.option("--labels", type=click.Path(dir_okay=False), help="labels CSV (file,tags[,caption]) or JSON.")
@click.option("--resolution", type=int, help="Centre-crop and resize to this size (default: the first image's).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="png", show_default=True)
@click.option("--shard-mb", type=float, default=64, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Processes that decode and resize.")
def data_ingest(src: str, dest: str, labels: str | None, resolution: int | None, fmt: str, shard_mb: float,
                workers: int) -> None:
    """Turn SRC (a folder, .zip or .tar of images, or an fsspec URL of one) into WebDataset shards at DEST.

    Writes DEST/manifest.json last and DEST/ingest_report.json with every skipped
    file and its reason. Exit status 0 when anything was ingested, 1 when nothing
    was or DEST is unreachable or not writable.
    """
    from collections import Counter

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from trainers.data.ingest import IngestError, ingest

    if labels is None and "://" not in src and (Path(src) / "labels.csv").is_file():
        labels = str(Path(src) / "labels.csv")
    try:
        columns = [TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, transient=True, console=None) as bar:
            task = bar.add_task("ingest", total=None)
            report = ingest(src, dest, labels, resolution, fmt, shard_mb, workers,
                            progress=lambda i, n: bar.update(task, completed=i, total=n))
    except IngestError as err:
        _fail(str(err), 1)
    m = report.manifest
    click.echo(f"ingested {report.ingested} images into {len(m.shards)} shards at {dest} "
               f"({m.resolution}x{m.resolution}, {len(m.tags)} tags, hash {m.dataset_hash[:12]})")
    if report.skipped:
        kinds = Counter(s["reason"].split(" (")[0].split(":")[0] for s in report.skipped)
        click.echo(f"skipped {len(report.skipped)} files (all listed in {dest.rstrip('/')}/ingest_report.json):",
                   err=True)
        for kind, n in kinds.most_common():
            click.echo(f"  {n:6d}  {kind}", err=True)
        for s in report.skipped[:5]:
            click.echo(f"  e.g. {s['file']}: {s['reason']}", err=True)


# -- models ------------------------------------------------------------------
@main.command("generate")
@click.argument("model_uri")
@click.option("--n", "n", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--tags", help="Comma-separated tags (conditional models only).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PATH.png (a grid) or PATH.npz (uint8 NxHxWx3).")
def generate_cmd(model_uri: str, n: int, seed: int, tags: str | None, out: str) -> None:
    """Sample a registered generator (models:/NAME/VERSION or models:/NAME@ALIAS)."""
    from orchestrator.generate import GenerateError, generate

    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if tags else None
    try:
        path = generate(model_uri, n, seed, out, tag_list)
    except GenerateError as err:
        _fail(str(err), 1)
    click.echo(f"wrote {n} samples of {model_uri} to {path}")


# -- preemption --------------------------------------------------------------
@main.command("agent")
@click.option("--provider", type=click.Choice(["aws", "gcp", "sigterm"]), required=True,
              help="Where the notice comes from: AWS IMDSv2, the GCE metadata server, or SIGTERM (Kubernetes).")
@click.option("--metadata-url", help="Metadata server base URL (default: the provider's link-local address).")
@click.option("--node-id", help="Hex id of the Ray node to drain (default: the node on this host).")
@click.option("--margin-s", type=float, default=10.0, show_default=True,
              help="Drain deadline = notice end minus this margin.")
@click.option("--poll-s", type=float, default=5.0, show_default=True, help="Seconds between metadata polls.")
@click.option("--grace-s", type=float, default=30.0, show_default=True,
              help="sigterm provider: seconds between SIGTERM and the kill (the pod's grace period).")
@click.option("--address", "gcs_address", help="Ray GCS address host:port (default: RAY_ADDRESS or the local stack).")
def agent_cmd(provider: str, metadata_url: str | None, node_id: str | None, margin_s: float, poll_s: float,
              grace_s: float, gcs_address: str | None) -> None:
    """Watch this node's preemption notice and drain its Ray node (reason PREEMPTION) when it comes."""
    import logging

    from orchestrator.agent import (AWS_DEFAULT_URL, GCP_DEFAULT_URL, AwsSpotWatcher, GcpPreemptionWatcher,
                                    NoticeAgent, SigtermWatcher, drain_ray_node, local_node_id)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s ganray-agent %(levelname)s %(message)s")
    address = gcs_address or os.environ.get("RAY_ADDRESS")
    if not address:
        _fail("no Ray address: pass --address or set RAY_ADDRESS")
    if provider == "aws":
        watcher = AwsSpotWatcher(metadata_url or AWS_DEFAULT_URL)
    elif provider == "gcp":
        watcher = GcpPreemptionWatcher(metadata_url or GCP_DEFAULT_URL)
    else:
        watcher = SigtermWatcher(grace_s)
    node = node_id or local_node_id(address)
    logging.getLogger("ganray.agent").info("watching %s for node %s", provider, node)
    NoticeAgent(watcher, lambda deadline, msg: drain_ray_node(address, node, deadline, msg),
                margin_s=margin_s, poll_s=poll_s).run()


if __name__ == "__main__":
    main()
