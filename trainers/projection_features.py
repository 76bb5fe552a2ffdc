"""The feature losses the projector (``trainers.projection``) can add to its pixel loss, none downloaded.

- D's own intermediate features, from the training checkpoint a version was registered from
  (:func:`discriminator_from_checkpoint`: verified, loaded weights-only, rebuilt from the
  checkpoint's stored spec with ``trainers.networks``). :func:`discriminator_features` runs D's
  input-side blocks only (StyleGAN2's residual blocks, DCGAN's strided convolutions), so neither
  the condition nor D's training forward is involved.
- The FID Inception's pool3 features, when their weights are already on this machine
  (:func:`local_inception_weights`: ``$GANRAY_FID_WEIGHTS``, or the copy FID downloaded into the
  cache, its sha256 prefix checked); this module never downloads them.

Each extractor maps images (N, 3, R, R) in [-1, 1] to a list of feature tensors, differentiably;
:func:`feature_distance` compares two such lists (each feature vector scaled to unit length
first, as LPIPS does before its learned weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainers import settings
from trainers.checkpoints.format import CheckpointError, load_state, verify

Features = Callable[[torch.Tensor], list[torch.Tensor]]


def discriminator_features(d: nn.Module) -> Features:
    """The outputs of D's input-side blocks (``input_blocks()``) for images in [-1, 1]; D is left as it is."""
    blocks = d.input_blocks()
    style = hasattr(blocks[0], "fromrgb")  # StyleGAN2's residual blocks take (x, img)

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], None if style else images
        for block in blocks:
            x = block(x, images) if style else block(x)
            out.append(x)
        return out

    return features


def inception_features(net: nn.Module) -> Features:
    """The pool3 features of the FID Inception (``trainers.metrics.inception``), the images resized
    bilinearly to its 299x299 input inside the graph (so that gradients reach the pixels)."""
    from trainers.metrics.inception import INPUT_SIZE

    def features(images: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return [net(x)]

    return features


def feature_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Per image (N,): the mean over layers of the squared distance between unit-length feature vectors
    (per position for maps), averaged over positions; 0 for the same features, at most 4."""
    total = None
    for fa, fb in zip(a, b):
        ua, ub = F.normalize(fa.float(), dim=1, eps=1e-8), F.normalize(fb.float(), dim=1, eps=1e-8)
        d = (ua - ub).square().sum(dim=1)
        d = d.flatten(1).mean(dim=1) if d.dim() > 1 else d
        total = d if total is None else total + d
    if total is None:
        raise ValueError("feature_distance needs at least one feature layer")
    return total / len(a)


def discriminator_from_checkpoint(directory: str | Path, generator_config: dict[str, Any]) -> nn.Module:
    """D of a training checkpoint, in eval mode and without gradients, for a version whose generator config
    is generator_config. The checkpoint is verified against its sha256 indexes and loaded weights-only; one
    whose generator is another (its config differs), or without D or a spec, is a CheckpointError."""
    from trainers.networks import build_models
    from trainers.spec import ModelSpec, read_stored_spec

    verify(directory)
    state = load_state(directory)
    stored, d_state = state.get("spec"), state.get("d")
    if state.get("generator_config") != generator_config:
        raise CheckpointError(f"checkpoint {directory} holds another generator than this version "
                              f"({state.get('generator_config')} vs {generator_config})")
    if not isinstance(stored, dict) or not isinstance(d_state, dict):
        raise CheckpointError(f"checkpoint {directory} holds no discriminator or no spec")
    try:
        section = ModelSpec.model_validate(read_stored_spec(stored)["model"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint {directory}: its model section does not validate: {err}") from None
    _, d = build_models(section, int(generator_config["resolution"]), int(generator_config.get("c_dim") or 0))
    try:
        d.load_state_dict(d_state)
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {directory}: its discriminator does not fit its spec: "
                              f"{str(err)[:300]}") from None
    return d.eval().requires_grad_(False)


def local_inception_weights() -> Path | None:
    """The FID Inception weights when they are on this machine: ``$GANRAY_FID_WEIGHTS`` (a file), else the
    copy FID evaluation downloaded into the cache (its sha256 prefix checked); None otherwise. Nothing is
    downloaded."""
    from trainers.metrics import cache_dir
    from trainers.metrics.download import DownloadError, file_name, file_sha256
    from trainers.metrics.inception import STANDARD_URL, WEIGHTS_ENV, WEIGHTS_URL_ENV

    named = settings.get(WEIGHTS_ENV)
    if named:
        path = Path(named).expanduser()
        return path if path.is_file() else None
    try:
        name, prefix = file_name(settings.get(WEIGHTS_URL_ENV) or STANDARD_URL)
    except DownloadError:
        return None
    path = cache_dir() / "inception" / name
    return path if path.is_file() and file_sha256(path).startswith(prefix) else None
