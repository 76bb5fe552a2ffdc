"""``ganray generate``: samples of a registered generator written as a grid (.png) or arrays (.npz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainers.errors import UsageError
from trainers.grid import make_grid
from trainers.model_ref import ModelRef
from trainers.sampling import check_count, check_truncation, condition_rows, prompt_vector, sample

OUTPUT_SUFFIXES = (".png", ".npz")


def write_images(images: np.ndarray, out: str | Path) -> Path:
    """Writes a grid (.png) or an array file (.npz, key ``images``, uint8 NxHxWx3)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        make_grid(images).save(out)
    elif out.suffix == ".npz":
        np.savez_compressed(out, images=images)
    return out


def generate(client, ref: ModelRef, n: int, seed: int, out: str | Path, tags: list[str] | None = None,
             truncation: float = 1.0, prompt: str | None = None, exact_tags: bool = False) -> Path:
    """Loads the version ref names from client's registry (``deploy.loader``), draws n samples from seeds
    seed..seed+n-1 (all with ``tags`` if the model is tag-conditioned, the tags they leave open drawn per
    sample from the training data's tag sets unless exact_tags; at StyleGAN2 truncation psi ``truncation``,
    1: none), writes out by its suffix. An unknown tag is an error listing the known ones. A text-conditioned
    model takes ``prompt`` instead (every sample gets it): a prompt with tags, an empty one, one over 300
    characters, or one to a model without text conditioning is an error."""
    from deploy.loader import load_named

    check_sample_request(out, n, prompt, tags)
    model, where = load_named(client, ref), ref.uri
    meta = model.meta
    c = (prompt_vector(meta, prompt, where) if prompt is not None
         else condition_rows(meta, tags, n, seed, where, fill=not exact_tags))
    psi = check_truncation(meta, truncation, where)
    return write_images(sample(model.generator, meta.z_dim, n, seed, c=c, truncation=psi, takes_psi=meta.takes_psi),
                        out)


def check_sample_request(out: str | Path, n: int, prompt: str | None, tags: list[str] | None) -> None:
    """UsageError for what a sample request gets wrong before anything is loaded (or the registry asked):
    the suffix of out, the count, the prompt."""
    if Path(out).suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out must end in .png (a grid) or .npz (an array), got {str(out)!r}")
    check_count(n)
    _check_prompt(prompt, tags)


def _check_prompt(prompt: str | None, tags: list[str] | None) -> None:
    """UsageError for --prompt with --tags, or a prompt that is empty or over 300 characters."""
    if prompt is None:
        return
    if tags:
        raise UsageError("give --prompt or --tags, not both (a text-conditioned model takes a prompt, "
                         "a tag-conditioned one tags)")
    check_prompt_text(prompt)


def check_prompt_text(prompt: str | None, option: str = "--prompt") -> None:
    """UsageError naming option for a prompt that is empty or over 300 characters (None: no prompt)."""
    from trainers.conditioning.text import PromptError, check_prompt

    if prompt is None:
        return
    try:
        check_prompt(prompt)
    except PromptError as err:
        raise UsageError(f"{option}: {err}") from None
