"""The checkpoint format: everything needed to continue as if nothing happened, verified and loaded safely.

A checkpoint folder (its name: :mod:`trainers.checkpoints.layout`) holds ``state.pt`` (written by
rank 0: G, D, G_ema, both optimisers, both scalers, augment state, loss state (path-length mean),
step, images seen / kimg, train time, data-stream state, spec, generator config, tag vocabulary
and the evaluations so far), one ``rank_R.pt`` per rank (its RNG states) and ``grid.png``
(fixed-seed samples).

Each rank writes its own files into its own folder and Ray Train uploads them all into one
checkpoint folder, so each rank also writes, last, ``index_rank_R.json``: the name, size and
sha256 of every file it wrote (rank 0's also holds the world size, the step and the spec).
:func:`verify` checks a checkpoint against its indexes: every rank of the world size indexed,
every indexed file there with its size and hash. A checkpoint written before indexes existed
(no index at all) verifies when its state loads and every rank file of its world size is there.

Everything is loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists,
dicts. A file whose pickle names anything else (a class, a function: code that loading would
run) is refused with a :class:`CheckpointError`, and nothing of it runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.errors import GanrayError
from trainers.networks import build_generator

STATE_FILE = "state.pt"
GRID_FILE = "grid.png"
INDEX_VERSION = 1
_INDEX = re.compile(r"index_rank_(\d+)\.json$")
_UNSAFE = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", re.IGNORECASE)


class CheckpointError(GanrayError, RuntimeError):
    """A checkpoint that does not verify or cannot be loaded safely; the message names it and says why."""


def rank_file(rank: int) -> str:
    """The file name of one rank's RNG state."""
    return f"rank_{rank}.pt"


def index_file(rank: int) -> str:
    """The file name of one rank's index (what it wrote: names, sizes, sha256)."""
    return f"index_rank_{rank}.json"


def grid_name(step: int) -> str:
    """The file name a checkpoint's sample grid gets in the job's MLflow run (under samples/)."""
    return f"step_{step:09d}.png"


def plain(obj: Any) -> Any:
    """obj with numpy values made plain (numbers, tensors): what weights_only loading accepts. Containers
    holding none are returned as they are (a module's state dict keeps its type and metadata)."""
    if isinstance(obj, dict):
        out = {k: plain(v) for k, v in obj.items()}
        return obj if all(out[k] is v for k, v in obj.items()) else out
    if isinstance(obj, (list, tuple)):
        items = [plain(v) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj)) else type(obj)(items)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temp name, then rename: a crash never leaves a half file."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_index(directory: str | Path, rank: int, world_size: int, step: int,
                spec: dict[str, Any] | None = None) -> None:
    """Writes, last, rank's index of every other file in directory (this rank's part of a checkpoint)."""
    directory = Path(directory)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(directory.iterdir())
             if p.is_file() and not _INDEX.match(p.name) and not p.name.endswith(".tmp")}
    index = {"version": INDEX_VERSION, "rank": rank, "world_size": world_size, "step": step, "files": files}
    if spec is not None:
        index["spec"] = spec
    tmp = directory / f"{index_file(rank)}.tmp"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, directory / index_file(rank))


def read_index(directory: str | Path, rank: int = 0) -> dict[str, Any] | None:
    """A rank's index of a checkpoint, or None when it has none; CheckpointError when it is unreadable."""
    path = Path(directory) / index_file(rank)
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {directory}: {path.name} is unreadable ({type(err).__name__})") from None
    if not isinstance(index, dict) or not isinstance(index.get("files"), dict):
        raise CheckpointError(f"checkpoint {directory}: {path.name} is not an index")
    return index


def _check_files(directory: Path, index: dict[str, Any], rank: int) -> None:
    must = {rank_file(rank)} | ({STATE_FILE, GRID_FILE} if rank == 0 else set())
    missing = sorted(must - set(index["files"]))
    if missing:
        raise CheckpointError(f"checkpoint {directory}: {index_file(rank)} does not list {', '.join(missing)}")
    for name, entry in sorted(index["files"].items()):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory}: {name} is missing")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(f"checkpoint {directory}: {name} has {size} bytes, its index says "
                                  f"{entry.get('size')}")
        if _sha256(path) != entry.get("sha256"):
            raise CheckpointError(f"checkpoint {directory}: {name} does not match its sha256 in {index_file(rank)}")


def verify(directory: str | Path) -> dict[str, Any] | None:
    """Checks a checkpoint folder; raises CheckpointError naming it and what is wrong.

    Returns rank 0's index, or None for a checkpoint written before indexes existed: that one
    verifies when its state loads safely and every rank file of its world size is there.
    """
    directory = Path(directory)
    indexes = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _INDEX.match(p.name)))
    if not indexes:
        state = load_state(directory)
        world = int(state.get("world_size", 1))
        missing = [rank_file(r) for r in range(world) if not (directory / rank_file(r)).exists()]
        if missing:
            raise CheckpointError(f"checkpoint {directory}: {', '.join(missing)} missing "
                                  f"(written by {state.get('world_size')} ranks)")
        return None
    head = read_index(directory, 0)
    if head is None:
        raise CheckpointError(f"checkpoint {directory}: {index_file(0)} is missing (ranks {indexes} indexed)")
    world = int(head.get("world_size", 0))
    for rank in range(world):
        index = head if rank == 0 else read_index(directory, rank)
        if index is None:
            raise CheckpointError(f"checkpoint {directory}: {index_file(rank)} is missing (written by {world} ranks)")
        _check_files(directory, index, rank)
    return head


def _load(path: Path, what: str) -> Any:
    """torch.load(weights_only=True) with errors that name the file: unsafe content, or a damaged file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSAFE.search(str(err))
        detail = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{what} {path} holds objects other than tensors and plain values{detail}; refused "
                              "without loading it: loading it could run code") from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError... for a damaged file
        first = str(err).split(". ")[0][:200]
        raise CheckpointError(f"{what} {path} cannot be read (truncated or damaged): {type(err).__name__}: "
                              f"{first}") from None


def load_state(directory: str | Path) -> dict[str, Any]:
    """Reads state.pt of a checkpoint directory safely; CheckpointError when it is missing, damaged or unsafe."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"checkpoint {directory} has no {STATE_FILE}")
    state = _load(path, "checkpoint state")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state {path} is not a state dict")
    return state


def load_rank_state(directory: str | Path, rank: int) -> dict[str, Any] | None:
    """The RNG state that rank saved, or None (a new rank after a resize); loaded safely."""
    path = Path(directory) / rank_file(rank)
    return _load(path, "checkpoint rank state") if path.exists() else None


def generator_from_checkpoint(directory: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(generator in eval mode, info) from a checkpoint: the EMA weights where there are some.

    info holds the generator config, step, images seen, the spec, the dataset hash, the tag
    vocabulary, the conditioning and the latest evaluation (metrics with their settings).
    The checkpoint is verified and loaded safely (CheckpointError otherwise).
    """
    verify(directory)
    state = load_state(directory)
    g = build_generator(state["generator_config"])
    g.load_state_dict(state["g_ema"] if state.get("g_ema") is not None else state["g"])
    g.eval()
    info = {k: state[k] for k in ("generator_config", "step", "images_seen", "spec", "dataset_hash", "tags",
                                  "tag_sets", "conditioning") if k in state}
    info.setdefault("conditioning", "tags" if state["generator_config"].get("c_dim") else "none")
    if state.get("evaluations"):
        info["evaluation"] = state["evaluations"][-1]
    return g, info
