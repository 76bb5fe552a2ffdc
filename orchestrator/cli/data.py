"""``ganray data synth|ingest``: the built-in synthetic faces, and ingest into shards."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from trainers.errors import UsageError


@click.group()
def data() -> None:
    """Datasets: the built-in synthetic faces, and ingest into shards."""


@data.command("synth")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Number of images.")
@click.option("--resolution", type=int, default=64, show_default=True, help="Image size (power of two).")
@click.option("--seed", type=int, default=0, show_default=True)
def data_synth(dest: str, n: int, resolution: int, seed: int) -> None:
    """Draw a deterministic dataset of tagged anime-style faces into DEST (PNGs + labels.csv)."""
    from trainers.data.ingest.synth import write_synthetic_dataset

    try:
        labels = write_synthetic_dataset(dest, n, resolution, seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    click.echo(f"wrote {n} images and {labels}")


@data.command("ingest")
@click.argument("src")
@click.argument("dest")
@click.option("--labels", type=click.Path(dir_okay=False), help="labels CSV (file,tags[,caption]) or JSON.")
@click.option("--resolution", type=int, help="Centre-crop and resize to this size (default: the first image's).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="png", show_default=True)
@click.option("--shard-mb", type=float, default=64, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Processes that decode and resize.")
@click.option("--labels-encoding", default="utf-8", show_default=True, help="Text encoding of the labels file.")
@click.option("--max-member-mb", type=float, default=256, show_default=True,
              help="Skip (and report) any file or archive member larger than this, decompressed.")
@click.option("--compose-captions", is_flag=True,
              help="Give samples that have tags but no caption one composed from their tags (text models).")
@click.option("--ray", "on_ray", is_flag=True,
              help="Decode and resize as Ray tasks over the cluster's CPUs (RAY_ADDRESS or the local stack); "
                   "SRC and DEST must be URLs every node reaches (s3://..., or file:///shared/path).")
def data_ingest(src: str, dest: str, labels: str | None, resolution: int | None, fmt: str, shard_mb: float,
                workers: int, labels_encoding: str, max_member_mb: float, compose_captions: bool,
                on_ray: bool) -> None:
    """Turn SRC (a folder, .zip or .tar of images, or an fsspec URL of one) into WebDataset shards at DEST.

    Shards go into a new version folder DEST/v-<time>-<id>/ and DEST/manifest.json
    switches to them last, so readers of the previous version keep working; older
    versions are removed by a later ingest. DEST/ingest_report.json lists every
    skipped file and its reason. Exit status 0 when anything was ingested, 1 when
    nothing was or DEST is unreachable or not writable, 2 for bad arguments.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from trainers.data.ingest.local import ingest

    if labels is None and "://" not in src and (Path(src) / "labels.csv").is_file():
        labels = str(Path(src) / "labels.csv")
    if labels is None and on_ray and src.startswith("file://") and (Path(src[7:]) / "labels.csv").is_file():
        labels = str(Path(src[7:]) / "labels.csv")
    columns = [TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True, console=None) as bar:
        task = bar.add_task("ingest", total=None)
        options = dict(progress=lambda i, n: bar.update(task, completed=i, total=n),
                       labels_encoding=labels_encoding, max_member_mb=max_member_mb,
                       compose_captions=compose_captions)
        if on_ray:  # every CPU of the cluster works; --workers does not apply
            from orchestrator.cluster.ingest import ingest_on_ray

            report = ingest_on_ray(src, dest, labels, resolution, fmt, shard_mb, **options)
        else:
            report = ingest(src, dest, labels, resolution, fmt, shard_mb, workers, **options)
    _print_report(report, dest)


def _print_report(report, dest: str) -> None:
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


COMMANDS = [data]
