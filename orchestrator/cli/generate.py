"""``ganray generate``: samples of a registered generator, or a latent walk through it (``--walk``)."""
from __future__ import annotations

import click

from trainers.errors import UsageError

WALK_ONLY = ("frames", "grid", "tags_to", "prompt_to", "fps")


@click.command("generate")
@click.argument("model", metavar="MODEL")
@click.option("--version", "version", help="The version, when MODEL names none (MODEL --version V).")
@click.option("--n", "n", type=int, default=16, show_default=True,
              help="Number of samples (1 to 1024; not with --walk).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--tags", help="Comma-separated tags (conditional models only); the tags they leave open are drawn "
                             "per sample from the training data's tag sets (none given: every tag drawn so); a walk's frames get "
                             "exactly these.")
@click.option("--exact-tags", is_flag=True, help="Give every sample exactly --tags, nothing drawn.")
@click.option("--prompt", help="A text prompt, at most 300 characters (text-conditioned models only; not with --tags).")
@click.option("--truncation", type=float, default=1.0, show_default=True,
              help="StyleGAN2's truncation psi toward the average w (1: none; other architectures: 1 only).")
@click.option("--walk", "walk_seeds", metavar="SEEDS",
              help="A latent walk through these comma-separated seeds and back to the first (2 to 64; one while "
                   "the tags or prompt move), in z (spherical) or, for a StyleGAN2, in W (linear); --out "
                   ".gif, .webp or .mp4.")
@click.option("--frames", type=int, default=60, show_default=True, help="Frames of a walk, 2 to 600.")
@click.option("--grid", metavar="RxC", help="A grid of R x C walks (at most 64); walk i goes through SEEDS + "
                                            "i * (max - min + 1).")
@click.option("--tags-to", help="A walk's tags move from --tags to these over the walk.")
@click.option("--prompt-to", help="A walk's prompt moves from --prompt to this one over the walk.")
@click.option("--fps", type=int, default=24, show_default=True, help="Frames per second of a walk's file (1 to 60).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="PATH.png (a grid) or PATH.npz (uint8 NxHxWx3); with --walk PATH.gif, PATH.webp or PATH.mp4 "
                   "(MP4 needs pip install 'ganray[video]').")
@click.option("--latent", type=click.Path(dir_okay=False),
              help="A latent file of `ganray project`: redraw that picture (under --tags / --prompt when given).")
@click.pass_context
def generate_cmd(ctx: click.Context, model: str, version: str | None, n: int, seed: int, tags: str | None,
                 exact_tags: bool, prompt: str | None, truncation: float, walk_seeds: str | None, frames: int,
                 grid: str | None, tags_to: str | None, prompt_to: str | None, fps: int, out: str,
                 latent: str | None) -> None:
    """Sample a registered generator: MODEL@ALIAS, MODEL/V or MODEL --version V (models:/ in front is optional).

    With --walk SEEDS: a looping latent walk through the seeds, written as an animation.
    """
    from trainers.model_ref import parse_ref

    ref = parse_ref(model, version, need_version=True)
    given = {name for name in ctx.params if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if walk_seeds is None and given & set(WALK_ONLY):
        raise UsageError(f"{', '.join('--' + o.replace('_', '-') for o in sorted(given & set(WALK_ONLY)))} "
                         "go with --walk")
    if walk_seeds is not None and given & {"n", "seed", "exact_tags"}:
        raise UsageError("--n, --seed and --exact-tags are for samples; a walk takes its seeds from --walk SEEDS")
    if latent:
        from orchestrator.explore.redraw import redraw_from_cli

        return click.echo(redraw_from_cli(_client(), ref, latent, out, _tag_list(tags), prompt, truncation))
    if walk_seeds is not None:
        _walk(ref, walk_seeds, frames, grid, _tag_list(tags), _tag_list(tags_to), prompt, prompt_to,
              truncation, fps, out)
        return
    from orchestrator.explore.generate import check_sample_request, generate

    check_sample_request(out, n, prompt, _tag_list(tags))  # before the registry is asked
    path = generate(_client(), ref, n, seed, out, _tag_list(tags), truncation=truncation, prompt=prompt,
                    exact_tags=exact_tags)
    click.echo(f"wrote {n} samples of {ref.uri} to {path}")


def _client():
    """A client of the current cluster's tracking server and registry."""
    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import resolve_endpoints

    return tracking_server.client(resolve_endpoints().mlflow_uri)


def _tag_list(tags: str | None) -> list[str] | None:
    return [t.strip() for t in tags.split(",") if t.strip()] if tags else None


def _walk(ref, walk_seeds: str, frames: int, grid: str | None, tags, tags_to, prompt, prompt_to,
          truncation: float, fps: int, out: str) -> None:
    """Draws and writes a walk (``orchestrator.explore.walk``), its progress on stderr; the request is
    checked before anything is loaded."""
    from orchestrator.explore.animation import check_animation_path
    from orchestrator.explore.generate import check_prompt_text
    from orchestrator.explore.walk import WalkRequest, check_request, parse_grid, parse_seeds, walk

    check_prompt_text(prompt)
    check_prompt_text(prompt_to, "--prompt-to")
    request = WalkRequest(parse_seeds(walk_seeds), frames, parse_grid(grid), tags, tags_to, prompt, prompt_to,
                          truncation, fps)
    check_animation_path(out, fps)
    check_request(request)

    def progress(done: int, total: int) -> None:
        click.echo(f"\r frames {done}/{total}", nl=done == total, err=True)

    path, space = walk(_client(), ref, request, out, note=lambda line: click.echo(f"note: {line}", err=True),
                       progress=progress)
    rows, cols = request.grid
    walks = f"{rows}x{cols} walks" if rows * cols > 1 else "a walk"
    click.echo(f"wrote {walks} of {frames} frames in {space} through seeds {walk_seeds} of {ref.uri} to {path}")


COMMANDS = [generate_cmd]
