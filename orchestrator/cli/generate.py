"""``ganray generate``: samples of a registered generator."""
from __future__ import annotations

import click


@click.command("generate")
@click.argument("model_uri", metavar="MODEL")
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
def generate_cmd(model_uri: str, version: str | None, n: int, seed: int, tags: str | None, exact_tags: bool,
                 prompt: str | None, truncation: float, out: str) -> None:
    """Sample a registered generator: MODEL --version V, MODEL@ALIAS, MODEL/V, models:/MODEL/V, models:/MODEL@ALIAS."""
    from orchestrator.explore.generate import generate
    from orchestrator.registry.model_ref import parse_ref

    model_uri = parse_ref(model_uri, version, need_version=True).uri
    tag_list = [t.strip() for t in tags.split(",") if t.strip()] if tags else None
    path = generate(model_uri, n, seed, out, tag_list, truncation=truncation, prompt=prompt, exact_tags=exact_tags)
    click.echo(f"wrote {n} samples of {model_uri} to {path}")


COMMANDS = [generate_cmd]
