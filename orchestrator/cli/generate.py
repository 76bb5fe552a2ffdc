"""``ganray generate``: samples of a registered generator."""
from __future__ import annotations

import click


@click.command("generate")
@click.argument("model", metavar="MODEL")
@click.option("--version", "version", help="The version, when MODEL names none (MODEL --version V).")
@click.option("--n", "n", type=int, default=16, show_default=True, help="Number of samples (1 to 1024).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--tags", help="Comma-separated tags (conditional models only); the tags they leave open are drawn "
                             "per sample from the training data's tag sets.")
@click.option("--exact-tags", is_flag=True, help="Give every sample exactly --tags, nothing drawn.")
@click.option("--prompt", help="A text prompt, at most 300 characters (text-conditioned models only; not with --tags).")
@click.option("--truncation", type=float, default=1.0, show_default=True,
              help="StyleGAN2's truncation psi toward the average w (1: none; other architectures: 1 only).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="PATH.png (a grid) or PATH.npz (uint8 NxHxWx3).")
@click.option("--latent", type=click.Path(dir_okay=False),
              help="A latent file of `ganray project`: redraw that picture (under --tags / --prompt when given).")
def generate_cmd(model: str, version: str | None, n: int, seed: int, tags: str | None, exact_tags: bool,
                 prompt: str | None, truncation: float, out: str, latent: str | None) -> None:
    """Sample a registered generator: MODEL@ALIAS, MODEL/V or MODEL --version V (models:/ in front is optional)."""
    from orchestrator import tracking_server
    from orchestrator.cluster.endpoints import resolve_endpoints
    from orchestrator.explore.generate import generate
    from trainers.model_ref import parse_ref

    ref = parse_ref(model, version, need_version=True)
    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if tags else None
    client = tracking_server.client(resolve_endpoints().mlflow_uri)
    if latent:
        from orchestrator.explore.redraw import redraw_from_cli

        return click.echo(redraw_from_cli(client, ref, latent, out, tag_list, prompt, truncation))
    path = generate(client, ref, n, seed, out, tag_list, truncation=truncation, prompt=prompt, exact_tags=exact_tags)
    click.echo(f"wrote {n} samples of {ref.uri} to {path}")


COMMANDS = [generate_cmd]
