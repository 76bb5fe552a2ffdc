"""Checkpoint state: everything needed to continue as if nothing happened.

A checkpoint directory holds ``state.pt`` (written by rank 0: G, D, G_ema, both
optimisers, both scalers, augment state, loss state (path-length mean), step, images
seen / kimg, train time, data-stream state, spec, generator config, tag vocabulary and
the evaluations so far), one ``rank_R.pt`` per rank (its RNG states) and ``grid.png``
(fixed-seed samples).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from trainers.networks import build_generator

STATE_FILE = "state.pt"
GRID_FILE = "grid.png"
_NAME = re.compile(r"checkpoint_(\d{9,})$")


def rank_file(rank: int) -> str:
    """The file name of one rank's RNG state."""
    return f"rank_{rank}.pt"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint written at step (sorts by step)."""
    return f"checkpoint_{step:09d}"


def checkpoint_step(path: str) -> int:
    """The step of a checkpoint from its folder name or any path or URL ending in it."""
    match = _NAME.search(str(path).rstrip("/"))
    if not match:
        raise ValueError(f"{path!r} is not a checkpoint folder (checkpoint_NNNNNNNNN)")
    return int(match.group(1))


def grid_name(step: int) -> str:
    """The file name a checkpoint's sample grid gets in the job's MLflow run (under samples/)."""
    return f"step_{step:09d}.png"


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temp name, then rename: a crash never leaves a half file."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(directory: str | Path) -> dict[str, Any]:
    """Reads state.pt of a checkpoint directory; a clear error when it is missing."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_rank_state(directory: str | Path, rank: int) -> dict[str, Any] | None:
    """The RNG state that rank saved, or None (a new rank after a resize)."""
    path = Path(directory) / rank_file(rank)
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def generator_from_checkpoint(directory: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(generator in eval mode, info) from a checkpoint: the EMA weights where there are some.

    info holds the generator config, step, images seen, the spec, the dataset hash, the tag
    vocabulary, the conditioning and the latest evaluation (metrics with their settings).
    """
    state = load_state(directory)
    g = build_generator(state["generator_config"])
    g.load_state_dict(state["g_ema"] if state.get("g_ema") is not None else state["g"])
    g.eval()
    info = {k: state[k] for k in ("generator_config", "step", "images_seen", "spec", "dataset_hash", "tags",
                                  "conditioning") if k in state}
    info.setdefault("conditioning", "tags" if state["generator_config"].get("c_dim") else "none")
    if state.get("evaluations"):
        info["evaluation"] = state["evaluations"][-1]
    return g, info
