"""Which checkpoint a (re)started worker group continues from: the newest one that verifies.

Ray Train hands every worker the job's latest checkpoint. Rank 0 lists the run's storage
folder (that checkpoint's parent; ``trainers.checkpoints.listing``) and tries the checkpoints at or
before it, newest first: one that does not verify (``format.verify``: a truncated ``state.pt``, a missing
``rank_R.pt``, an index that does not match) or does not load safely is skipped with a warning
naming it. Rank 0 broadcasts its choice, so every rank restores the same checkpoint; without a
process group (one worker, or ranks of a test in one process) each rank chooses alike from the
same storage. A chosen checkpoint written under another spec is refused (the fields that differ
are named, as ``trainers.spec.spec_difference`` says them): the driver refuses that before any
worker starts; this is the workers' own check.

When the group falls back past newer checkpoints, the checkpoints it writes from then on carry
a generation suffix (``checkpoint_000000012-1``), so that none is written into the folder of a
skipped one that Ray Train still tracks (and may delete).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch

from trainers.checkpoints.copies import local_copy
from trainers.checkpoints.format import CheckpointError, verify
from trainers.checkpoints.layout import checkpoint_name, parse_checkpoint_name
from trainers.checkpoints.listing import Stored, list_checkpoints
from trainers.checkpoints.stored_spec import read_spec
from trainers.spec import JobSpec, same_spec, spec_difference

log = logging.getLogger("ganray.resume")

_CHOSEN, _REFUSED = 1, 2


@dataclass
class Choice:
    """The checkpoint a group resumes from: its place in storage, a local copy, what was skipped on the way
    (path: reason), and the generation of the checkpoints written from now on."""

    stored: Stored
    local: str
    skipped: list[str]
    generation: int


def _candidates(fs, latest_path: str) -> list[Stored]:
    """The run's checkpoints at or before latest_path, newest first (latest_path itself always among them)."""
    latest = parse_checkpoint_name(latest_path)
    if latest is None:
        return [Stored(0, 0, latest_path)]
    stored = list_checkpoints(fs, _parent(latest_path))
    if all(s.path.rstrip("/") != latest_path.rstrip("/") for s in stored):
        stored = sorted({*stored, Stored(*latest, latest_path)}, reverse=True)
    return stored


def choose(fs, latest_path: str, spec: JobSpec, stack: contextlib.ExitStack) -> Choice:
    """The newest checkpoint at or before latest_path that verifies (its local copy kept open on stack).
    CheckpointError when none verifies, or when that one was written under another spec. A storage
    that cannot be read (OSError) is an error too, never a reason to fall back."""
    stored = _candidates(fs, latest_path)
    latest = parse_checkpoint_name(latest_path) or (0, 0)
    skipped: list[str] = []
    for s in stored:
        if (s.step, s.generation) > latest:
            continue  # newer than Ray's latest: never registered (an upload that did not finish)
        inner = contextlib.ExitStack()
        local = inner.enter_context(local_copy(fs, s.path))
        try:
            verify(local)
        except CheckpointError as err:
            inner.close()
            log.warning("ganray: checkpoint %s is skipped: %s", s.path, err)
            skipped.append(f"{s.path}: {err}")
            continue
        stack.enter_context(inner)
        written_under = read_spec(pafs.LocalFileSystem(), local)
        if isinstance(written_under, dict) and not same_spec(written_under, spec):
            raise CheckpointError(f"checkpoint {s.path} was written under a different spec "
                                  f"({spec_difference(written_under, spec)}); run the job with --fresh to start "
                                  "it over")
        newer = [o for o in stored if (o.step, o.generation) > (s.step, s.generation)]
        return Choice(s, local, skipped, max(o.generation for o in stored) + 1 if newer else s.generation)
    raise CheckpointError(f"no checkpoint of {_parent(latest_path)} verifies; skipped: {'; '.join(skipped)}")


def resume(loop, fs, latest_path: str) -> Choice:
    """Restores loop from the newest checkpoint at or before latest_path that verifies, the same on every
    rank (rank 0 chooses; the others learn its choice). CheckpointError when none can be restored."""
    with contextlib.ExitStack() as stack:
        choice, error = None, None
        decision = torch.zeros(4, dtype=torch.float64)  # status, step, generation, next generation
        if loop.rank == 0 or not loop.ddp:
            try:
                choice = choose(fs, latest_path, loop.spec, stack)
                s = choice.stored
                decision = torch.tensor([_CHOSEN, s.step, s.generation, choice.generation], dtype=torch.float64)
            except Exception as err:  # noqa: BLE001 - told to every rank first (none waits forever), then raised
                error, decision[0] = err, _REFUSED
        if loop.ddp:
            decision = loop._from_rank0(decision)
        status, step, gen, next_generation = (int(x) for x in decision.tolist())
        if error is not None:
            raise error
        if status != _CHOSEN:
            raise CheckpointError(f"no checkpoint of {_parent(latest_path)} to resume from: rank 0 refused them "
                                  "(its error says why)")
        if choice is None:  # a rank that did not choose: rank 0's pick, fetched here
            path = latest_path if parse_checkpoint_name(latest_path) is None else \
                f"{_parent(latest_path)}/{checkpoint_name(step, gen)}"
            choice = Choice(Stored(step, gen, path), stack.enter_context(local_copy(fs, path)), [],
                            next_generation)
        loop.restore(choice.local, verified=True)
    return choice


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0]
