"""``ganray generate MODEL --walk SEEDS``: a latent walk of a registered generator written as an animation.

The walk itself is ``trainers.walks`` (a loop through the key seeds back to the first: slerp in z, lerp in
W for a StyleGAN2 version with its exported parts). Here: the command's request read and bounded, the
version loaded through the one loader, a grid of walks, the progress and the file.

- SEEDS: comma-separated seeds, 2 to 64 (one is enough while the tags or the prompt move).
- ``--grid RxC``: R x C walks side by side, at most 64; cell i walks SEEDS + i * (max - min + 1), so no
  two cells share a key seed (cell 0 walks SEEDS themselves).
- ``--tags`` / ``--prompt``: every frame gets exactly that request (no tags drawn per sample: a walk
  keeps its faces); ``--tags-to`` / ``--prompt-to``: the request moves linearly to the second over the walk.
- Bounds: 2 to 600 frames, and at most MAX_WALK_PIXELS pixels in all frames together (frames x the
  grid's height x width).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from trainers.errors import UsageError
from trainers.grid import make_grid
from trainers.model_ref import ModelRef
from trainers.sampling import check_truncation, condition_vector, prompt_vector
from trainers.walks import MAX_KEYS, check_walk, walk_frames, walk_space

MAX_CELLS = 64
MAX_WALK_PIXELS = 150_000_000  # all frames together: 600 frames of a 500x500 grid; ~450 MB as uint8 RGB
GRID_PAD = 2  # pixels between the walks of a grid (make_grid's)


@dataclass(frozen=True)
class WalkRequest:
    """What a walk draws: key seeds, frames, the grid, the request (and where it moves), truncation, fps."""

    seeds: list[int]
    frames: int
    grid: tuple[int, int] = (1, 1)
    tags: list[str] | None = None
    tags_to: list[str] | None = None
    prompt: str | None = None
    prompt_to: str | None = None
    truncation: float = 1.0
    fps: int = 24

    @property
    def moving(self) -> bool:
        return self.tags_to is not None or self.prompt_to is not None

    def cell_seeds(self, cell: int) -> list[int]:
        """Cell i's key seeds: SEEDS + i * (max - min + 1), disjoint from every other cell's."""
        span = max(self.seeds) - min(self.seeds) + 1
        return [s + cell * span for s in self.seeds]


def parse_seeds(text: str) -> list[int]:
    """SEEDS "1,5,9" as ints; UsageError naming the bad part or a count over MAX_KEYS."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not re.fullmatch(r"\d{1,19}", p) for p in parts):
        raise UsageError(f"--walk takes comma-separated seeds (whole numbers from 0), e.g. 1,5,9; got {text[:80]!r}")
    if len(parts) > MAX_KEYS:
        raise UsageError(f"--walk takes at most {MAX_KEYS} seeds, got {len(parts)}")
    return [int(p) for p in parts]


def parse_grid(text: str | None) -> tuple[int, int]:
    """--grid "RxC" as (rows, columns), 1x1 when not given; UsageError past MAX_CELLS walks."""
    if text is None:
        return (1, 1)
    found = re.fullmatch(r"\s*(\d{1,3})\s*[xX]\s*(\d{1,3})\s*", text)
    if not found or int(found[1]) < 1 or int(found[2]) < 1:
        raise UsageError(f"--grid takes ROWSxCOLUMNS, e.g. 3x4; got {text[:40]!r}")
    rows, cols = int(found[1]), int(found[2])
    if rows * cols > MAX_CELLS:
        raise UsageError(f"--grid {rows}x{cols} is {rows * cols} walks; at most {MAX_CELLS}")
    return rows, cols


def check_request(request: WalkRequest) -> None:
    """UsageError for a request that cannot work: the bounds of ``trainers.walks.check_walk`` (for every
    cell's seeds), a moving request without a first one, or tags with a prompt."""
    from trainers.sampling import SamplingError

    if (request.tags_to is not None and request.tags is None) or (request.prompt_to is not None
                                                                   and request.prompt is None):
        raise UsageError("--tags-to needs --tags, and --prompt-to needs --prompt: the walk moves from the first "
                         "request to the second")
    if (request.tags is not None or request.tags_to is not None) and request.prompt is not None:
        raise UsageError("give --tags or --prompt, not both")
    rows, cols = request.grid
    try:
        for cell in (0, rows * cols - 1):  # the first and the last cell's seeds bound every cell's
            check_walk(request.cell_seeds(cell), request.frames, request.moving)
    except SamplingError as err:
        raise UsageError(str(err)) from None


def check_pixels(request: WalkRequest, resolution: int) -> None:
    """UsageError when the walk's frames at resolution hold more than MAX_WALK_PIXELS pixels in all."""
    height, width = _frame_size(resolution, request.grid)
    if request.frames * height * width > MAX_WALK_PIXELS:
        raise UsageError(f"{request.frames} frames of {width}x{height} pixels are over the walk's budget of "
                         f"{MAX_WALK_PIXELS:,} pixels: ask fewer frames or a smaller grid")


def _frame_size(resolution: int, grid: tuple[int, int]) -> tuple[int, int]:
    rows, cols = grid
    if rows * cols == 1:
        return resolution, resolution
    return rows * (resolution + GRID_PAD) + GRID_PAD, cols * (resolution + GRID_PAD) + GRID_PAD


def _conditions(meta, request: WalkRequest, where: str):
    """(c_from, c_to) of the request: exact tag vectors or prompt embeddings; None where not given."""
    if request.prompt is not None:
        return (prompt_vector(meta, request.prompt, where),
                prompt_vector(meta, request.prompt_to, where) if request.prompt_to is not None else None)
    return (condition_vector(meta, request.tags, where),
            condition_vector(meta, request.tags_to, where) if request.tags_to is not None else None)


def walk(client, ref: ModelRef, request: WalkRequest, out: str | Path, note: Callable[[str], None],
         progress: Callable[[int, int], None] | None = None) -> tuple[Path, str]:
    """Loads the version ref names (``deploy.loader``), draws the walk (a grid of them with --grid) and writes
    it to out (.gif, .webp or .mp4); returns (the file, the space walked: "z" or "w"). note(line) is told once
    when a StyleGAN2 version without its exported parts walks in z."""
    from deploy.loader import load_named
    from orchestrator.explore.animation import check_animation_path, write_animation

    check_animation_path(out, request.fps)
    check_request(request)
    model, where = load_named(client, ref), ref.uri
    check_pixels(request, model.meta.resolution)
    psi = check_truncation(model.meta, request.truncation, where)
    c_from, c_to = _conditions(model.meta, request, where)
    space = walk_space(model)
    if space == "z" and model.meta.arch == "stylegan2":
        note(f"{where} was registered before versions exported their W parts: walking in z "
             "(register it again from its checkpoint to walk in W)")
    rows, cols = request.grid
    cells = rows * cols
    walks = []
    for cell in range(cells):
        tick = None if progress is None else (lambda done, total, cell=cell: progress(cell * total + done,
                                                                                        cells * total))
        walks.append(walk_frames(model, request.cell_seeds(cell), request.frames, c_from, c_to, psi, progress=tick))
    frames = walks[0] if cells == 1 else np.stack([np.asarray(make_grid(np.stack([w[f] for w in walks]), cols))
                                                   for f in range(request.frames)])
    return write_animation(frames, out, request.fps), space
