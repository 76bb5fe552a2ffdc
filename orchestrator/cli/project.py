"""``ganray project``: a real picture projected into a registered generator (a latent file to redraw)."""
from __future__ import annotations

import click

DEFAULT_STEPS = 500
STEP_BOUNDS = "1 to 5000"  # trainers.projection's MIN_STEPS, MAX_STEPS (not imported here: it imports torch)


@click.command("project")
@click.argument("image", metavar="IMAGE", type=click.Path(dir_okay=False))
@click.argument("model", metavar="MODEL")
@click.option("--version", "version", help="The version, when MODEL names none (MODEL --version V).")
@click.option("--tags", help="Comma-separated tags the picture is fitted under (tag-conditioned models).")
@click.option("--prompt", help="A text prompt the picture is fitted under (text-conditioned models; not with --tags).")
@click.option("--steps", type=int, default=DEFAULT_STEPS, show_default=True,
              help=f"Optimisation steps ({STEP_BOUNDS}).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the start and of the fit's noise.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="PATH.npz: the latent file (the reconstruction goes to PATH.png beside it).")
@click.option("--video", type=click.Path(dir_okay=False), help="PATH.gif or PATH.webp: the fit as an animation.")
def project_cmd(image: str, model: str, version: str | None, tags: str | None, prompt: str | None, steps: int,
                seed: int, out: str, video: str | None) -> None:
    """Find the latent of MODEL whose picture is closest to IMAGE (z for DCGAN models, W+ for StyleGAN2);
    redraw it with `ganray generate MODEL --latent PATH.npz --tags ...`."""
    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import resolve_endpoints
    from orchestrator.explore.project import project_picture
    from trainers.model_ref import parse_ref

    ref = parse_ref(model, version, need_version=True)
    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if tags else None
    client = tracking_server.client(resolve_endpoints().mlflow_uri)
    tenth = max(1, steps // 10)

    def progress(done: int, total: int, loss: float) -> None:
        if done % tenth == 0 or done == total:
            click.echo(f"step {done}/{total}: loss {loss:.5f}", err=True)

    done = project_picture(client, ref, image, out, steps, seed, tag_list, prompt, video,
                           note=lambda line: click.echo(line, err=True), progress=progress)
    click.echo(done.summary())


COMMANDS = [project_cmd]
