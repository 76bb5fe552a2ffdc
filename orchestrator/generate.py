"""Samples from a registered generator: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.grid import make_grid, to_uint8

OUTPUT_SUFFIXES = (".png", ".npz")


class GenerateError(ValueError):
    """A request that cannot be served; the message says which part is wrong."""


def load_generator(model_uri: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(generator in eval mode, ganray metadata) of a registered model version."""
    import mlflow

    if not model_uri.startswith("models:/"):
        raise GenerateError(f"model URI must look like models:/NAME/VERSION or models:/NAME@ALIAS, got {model_uri!r}")
    try:
        info = mlflow.models.get_model_info(model_uri)
        loaded = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - MLflow raises several kinds for a missing model
        raise GenerateError(f"cannot load {model_uri}: {type(err).__name__}: {err}") from None
    meta = (info.metadata or {}).get("ganray", {})
    if "generator_config" not in meta:
        raise GenerateError(f"{model_uri} was not registered by ganray (no generator metadata)")
    try:
        loaded.eval()
    except NotImplementedError:  # a pt2 (exported) generator: traced in eval mode already
        pass
    return loaded, meta


def sample(generator, z_dim: int, n: int, seed: int, batch: int = 64, c: torch.Tensor | None = None) -> np.ndarray:
    """n images (uint8 NxHxWx3); image i comes from the noise of seed + i alone (and c, the same for all)."""
    if n < 1:
        raise GenerateError(f"--n must be >= 1, got {n}")
    z = torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])
    if c is not None:
        z = torch.cat([z, c.float().unsqueeze(0).expand(n, -1)], dim=1)  # the registered input is [z | c]
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            chunk = z[i:i + batch]
            # An exported generator keeps a dynamic batch of size >= 2: pad a single sample.
            padded = torch.cat([chunk, chunk]) if len(chunk) == 1 else chunk
            out.append(to_uint8(generator(padded))[: len(chunk)])
    return np.concatenate(out)


def tag_vector(meta: dict[str, Any], tags: list[str] | None, model_uri: str) -> torch.Tensor | None:
    """The multi-hot c for a request, from the vocabulary in the model's metadata (None: unconditional)."""
    from trainers.conditioning import TagEncoder, UnknownTagError
    from trainers.data.ingest import normalise_tags

    c_dim = int(meta.get("c_dim") or meta.get("generator_config", {}).get("c_dim") or 0)
    vocabulary = list(meta.get("tags") or [])
    if not c_dim:
        if tags:
            raise GenerateError(f"{model_uri} is unconditional (arch {meta.get('generator_config', {}).get('arch')}); "
                                "--tags needs a tag-conditioned model")
        return None
    if len(vocabulary) != c_dim:
        raise GenerateError(f"{model_uri} takes {c_dim} tags but its metadata lists {len(vocabulary)}")
    if not tags:
        raise GenerateError(f"{model_uri} is tag-conditioned: pass --tags \"a, b\" (known tags: "
                            f"{', '.join(vocabulary)})")
    try:
        return TagEncoder(vocabulary).encode_request(normalise_tags(tags))
    except UnknownTagError as err:
        raise GenerateError(f"{model_uri}: {err}") from None


def write_images(images: np.ndarray, out: str | Path) -> Path:
    """Writes a grid (.png) or an array file (.npz, key `images`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        make_grid(images).save(out)
    elif out.suffix == ".npz":
        np.savez_compressed(out, images=images)
    return out


def generate(model_uri: str, n: int, seed: int, out: str | Path, tags: list[str] | None = None) -> Path:
    """Loads model_uri, draws n samples from seeds seed..seed+n-1 (all for `tags` if the model is
    tag-conditioned), writes out by its suffix. An unknown tag is an error listing the known ones."""
    if Path(out).suffix not in OUTPUT_SUFFIXES:
        raise GenerateError(f"--out must end in .png (a grid) or .npz (an array), got {str(out)!r}")
    if n < 1:
        raise GenerateError(f"--n must be >= 1, got {n}")
    g, meta = load_generator(model_uri)
    c = tag_vector(meta, tags, model_uri)
    return write_images(sample(g, meta["generator_config"]["z_dim"], n, seed, c=c), out)
