"""Registration during a run (``registry.register: best | every``) and at its end (``last``), in the driver.

A ``Registrar`` thread (beside ``progress.Progress``) reads the evaluated checkpoints the Train
controller recorded in the run (``orchestrator/controller/evaluated.py``: each evaluated checkpoint
copied into the job's ``evaluated/`` folder, outside Ray Train's rotation, and a tag
``ganray.evaluated.<checkpoint>``) and registers the ones that qualify: with ``every`` each one, with
``best`` each one that beats every earlier evaluation by ``registry.best_by``. Registering is
idempotent (``versions.find_version`` by run and checkpoint), so a rerun never registers a
checkpoint twice; ``candidate`` moves to the newest version. The copy behind every registered
version is kept while the version exists (``model.init_from`` starts from it; ``ganray models delete``
removes both); the copies of checkpoints that do not qualify are deleted once decided. With ``last``
the final checkpoint is copied the same way before it is registered. Whatever is pending at the end
is finished then. No Ray here.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from orchestrator.controller.evaluated import evaluated_entries
from orchestrator.registry import versions
from trainers.checkpoints.deletion import delete_checkpoint
from trainers.checkpoints.layout import is_kept_copy
from trainers.checkpoints.storage import open_storage
from trainers.errors import GanrayError
from trainers.generator_metadata import GeneratorMetadata
from trainers.spec import LOWER_IS_BETTER, REPORTED_AS, JobSpec

log = logging.getLogger("ganray.registrar")
_LOCK = threading.Lock()  # one registration pass at a time in this process (thread and finish alike)


def qualifying(entries: list[dict[str, Any]], spec: JobSpec) -> list[dict[str, Any]]:
    """The entries to register: every one (``every``), or each that beats every earlier one (``best``;
    a missing or NaN value never does)."""
    if spec.registry.register == "every":
        return list(entries)
    measure, lower = REPORTED_AS[spec.registry.best_by], spec.registry.best_by in LOWER_IS_BETTER
    chosen, best = [], None
    for e in entries:
        value = e.get("metrics", {}).get(measure)
        if value is None or math.isnan(value):
            continue
        if best is None or (value < best if lower else value > best):
            chosen.append(e)
            best = value
    return chosen


class Registrar:
    """Registers a run's qualifying evaluated checkpoints; as a context manager, every few seconds on a thread."""

    def __init__(self, client, spec: JobSpec, run_id: str, every_s: float = 3.0):
        self.client, self.spec, self.run_id, self.every_s = client, spec, run_id, every_s
        self.enabled = spec.registry.evaluated
        self._done: dict[str, int] = {}  # entry URI -> its version
        self._failed: set[str] = set()
        self._deleted: set[str] = set()
        self._warned_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ganray-registrar", daemon=True)

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, exc_type, *exc):
        if not self.enabled:
            return
        self._stop.set()
        if exc_type is KeyboardInterrupt:  # a second Ctrl-C aborts without waiting for registration
            return
        self._thread.join()
        self._try_process()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._try_process()

    def _try_process(self) -> None:
        try:
            self.process()
        except Exception as err:  # noqa: BLE001 - MLflow away: the entries wait in the run for the next pass
            if time.monotonic() - self._warned_at > 30:
                log.warning("registration pass failed, retrying: %s: %s", type(err).__name__, err)
                self._warned_at = time.monotonic()

    def process(self) -> list[int]:
        """One pass: registers what qualifies and is not registered yet, deletes the copies no longer needed;
        returns the versions registered from the run's entries so far, oldest first."""
        with _LOCK:
            entries = evaluated_entries(self.client.get_run(self.run_id).data.tags)
            chosen = qualifying(entries, self.spec)
            for e in chosen:
                self._register(e)
            registered = [e["uri"] for e in chosen if e["uri"] in self._done]
            keep = {e["uri"] for e in chosen}  # registered (kept with their versions) or pending
            for uri in (e["uri"] for e in entries):
                if is_kept_copy(uri) and uri not in keep and uri not in self._deleted:
                    delete_checkpoint(*open_storage(uri))
                    self._deleted.add(uri)
            return [self._done[uri] for uri in registered]

    def _register(self, entry: dict[str, Any]) -> None:
        uri = entry["uri"]
        if uri in self._done:
            return
        try:
            self._done[uri] = versions.register_checkpoint(self.client, self.run_id, self.spec.model_name, uri,
                                                           self.spec.digest())
        except (OSError, ValueError, KeyError, GanrayError) as err:  # a checkpoint that is gone or unreadable
            if uri not in self._failed:
                log.warning("cannot register the evaluated checkpoint %s: %s: %s", uri, type(err).__name__, err)
                self._failed.add(uri)


def keep_final_copy(ckpt_uri: str, run_id: str) -> str:
    """The URI of a kept copy of the final checkpoint (out of Ray Train's rotation), made now; Ray's own URI
    when the copy fails (logged: the version is registered all the same, as an evaluated one would be)."""
    from trainers.checkpoints.copies import keep_copy
    from trainers.checkpoints.layout import kept_copy_path

    try:
        keep_copy(*open_storage(ckpt_uri), run_id)
    except OSError as err:
        log.warning("could not keep a copy of the final checkpoint %s: %s: %s", ckpt_uri, type(err).__name__, err)
        return ckpt_uri
    return kept_copy_path(ckpt_uri, run_id)


def register_finished(client, spec: JobSpec, run_id: str, ckpt_uri: str, generator, info: dict[str, Any]) -> int | None:
    """The version a finished job reports: ``last`` registers (once) the final generator, ``best`` and ``every``
    finish what is pending and report the newest version registered from the run; ``none``: None."""
    mode = spec.registry.register
    if mode == "none":
        return None
    if mode == "last":
        version = versions.find_version(client, spec.model_name, run_id, ckpt_uri) or versions.register_generator(
            client, run_id, spec.model_name, generator, GeneratorMetadata.from_checkpoint_info(info), spec.digest(),
            keep_final_copy(ckpt_uri, run_id), kimg=info.get("images_seen", 0) / 1000)
        versions.point_candidate(client, spec.model_name, version)
        return version
    Registrar(client, spec, run_id).process()
    found = versions.run_versions(client, spec.model_name, run_id)
    return found[-1] if found else None
