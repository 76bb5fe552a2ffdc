"""``ganray generate MODEL --latent latent.npz``: a projected picture redrawn, under other tags if asked.

The latent file (``trainers.latent_file``) is untrusted: read without pickles, its keys, dtypes
and sizes checked before the model is downloaded, then its model and shapes checked against the
version MODEL names (a latent belongs to one version; a mismatch is an error naming both). The
picture is drawn under --tags / --prompt (the same face, other hair), or under the condition it was
fitted with when neither is given.
"""
from __future__ import annotations

from pathlib import Path

import click
from PIL import Image

from trainers.errors import UsageError
from trainers.model_ref import ModelRef

SAMPLING_OPTIONS = ("n", "seed", "exact_tags")  # generate's options a redraw has no use for


def refuse_sampling_options(ctx: click.Context) -> None:
    """UsageError when --n, --seed or --exact-tags was given with --latent (a redraw draws one picture)."""
    given = [f"--{name.replace('_', '-')}" for name in SAMPLING_OPTIONS
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]
    if given:
        raise UsageError(f"--latent redraws one projected picture: {', '.join(given)} do not apply to it")


def redraw_latent(client, ref: ModelRef, latent: str | Path, out: str | Path, tags: list[str] | None = None,
                  prompt: str | None = None, truncation: float = 1.0) -> Path:
    """Redraws the latent file's picture with the version ref names and writes it to out: PATH.png (the
    picture) or PATH.npz (key ``images``, 1 x R x R x 3, as generate's)."""
    from deploy.loader import load_named
    from orchestrator.explore.generate import OUTPUT_SUFFIXES, write_images
    from orchestrator.explore.project import picture_condition
    from trainers.latent_file import check_fits, read_latent, redraw
    from trainers.sampling import check_truncation

    if Path(out).suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out must end in .png or .npz, got {str(out)!r}")
    found = read_latent(latent)
    model = load_named(client, ref)
    check_fits(found, model, str(latent))
    c = picture_condition(model.meta, tags, prompt, model.uri) if tags or prompt is not None else None
    psi = check_truncation(model.meta, truncation, model.uri)
    picture = redraw(model, found, c, psi)
    if Path(out).suffix == ".npz":
        return write_images(picture[None], out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(out)  # the picture itself, not a grid of one
    return Path(out)


def redraw_from_cli(client, ref: ModelRef, latent: str, out: str, tags: list[str] | None, prompt: str | None,
                    truncation: float) -> str:
    """generate's --latent branch: the options checked, the picture redrawn; returns the line to print."""
    refuse_sampling_options(click.get_current_context())
    path = redraw_latent(client, ref, latent, out, tags, prompt, truncation)
    return f"wrote the picture of {latent} redrawn by {ref.uri} to {path}"
