"""Evaluated checkpoints kept for registration: the controller's copy and the run tag the driver reads.

With ``registry.register: best | every``, the report callback calls :func:`keep_evaluated` for each
checkpoint whose report carries an evaluation: it copies the checkpoint into the job's ``evaluated/``
folder (``trainers.checkpoints.copies.keep_copy``), beside Ray Train's own rotation, so
``checkpoint.keep`` can never delete it, and returns the tag the callback records in the run
(``ganray.evaluated.<checkpoint>``: the copy's URI, the step, the generation, the headline metrics).
:func:`evaluated_entries` reads those tags back (the driver's ``registry.registrar``). No Ray import:
the controller passes its checkpoint object in.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from trainers.checkpoints.copies import keep_copy
from trainers.checkpoints.layout import parse_checkpoint_name
from trainers.checkpoints.storage import checkpoint_uri
from trainers.spec import REPORTED_AS

log = logging.getLogger("ganray.evaluated")
ENTRY_TAG = "ganray.evaluated."


def keep_evaluated(checkpoint, metrics: dict[str, Any], storage_url: str, run_id: str) -> tuple[str, str]:
    """(tag, value) recording an evaluated checkpoint, after copying it to ``<job>/evaluated/<run id>/<name>``.

    A copy that fails is logged, and the entry names Ray's checkpoint instead (registered while Ray keeps it).
    """
    src = checkpoint.path.rstrip("/")
    name = src.rsplit("/", 1)[-1]
    try:
        kept = keep_copy(checkpoint.filesystem, src, run_id)
    except Exception as err:  # noqa: BLE001 - registration can still read Ray's copy while it lasts
        log.warning("could not keep a copy of evaluated checkpoint %s: %s", name, type(err).__name__)
        kept = src
    step, generation = parse_checkpoint_name(name)
    headline = {k: float(metrics[k]) for k in REPORTED_AS.values() if isinstance(metrics.get(k), (int, float))}
    entry = {"uri": checkpoint_uri(storage_url, kept), "step": step, "generation": generation, "metrics": headline}
    return f"{ENTRY_TAG}{name}", json.dumps(entry)


def evaluated_entries(tags: dict[str, str]) -> list[dict[str, Any]]:
    """The evaluated checkpoints a run records, oldest first: by generation (a resume that fell back past
    newer checkpoints writes the next generation), then step."""
    entries = []
    for k, v in tags.items():
        if k.startswith(ENTRY_TAG):
            try:
                entries.append(json.loads(v))
            except ValueError:
                log.warning("unreadable evaluated-checkpoint tag %s", k)
    return sorted(entries, key=lambda e: (int(e.get("generation", 0)), int(e["step"])))
