"""The driver's half of ``model.init_from``: the checkpoint a fine-tune starts from, found and checked first.

At a job's first start (no run on record, or ``--fresh``) the source is resolved once: a
registered version (``deploy.loader.named_version``, the one alias resolver) to the training
checkpoint it was registered from (its ``checkpoint_uri`` tag: the registry keeps a copy per
version), or ``job:NAME`` to that finished job's final checkpoint. The checkpoint is verified
and loaded safely, and its architecture fields must be the new spec's
(``trainers.init_from.architecture_changes``), all before any worker starts. What was resolved
is recorded as the run's params (:data:`PREFIX` keys: the source model and version or job, its
run, its checkpoint); a resume reads the checkpoint back from there and never resolves again, and
every version the job registers carries the same keys as tags (``registry.versions``).
"""
from __future__ import annotations

from orchestrator.job import runs
from orchestrator.job.lifecycle import State, state_of
from trainers.checkpoints.copies import local_copy
from trainers.checkpoints.format import CheckpointError, load_state, verify
from trainers.checkpoints.storage import open_storage
from trainers.errors import GanrayError
from trainers.init_from import InitSource, SourceError, architecture_changes, new_fields, parse_source, source_fields
from trainers.spec import JobSpec

PREFIX = "init_from."
CHECKPOINT_PARAM = f"{PREFIX}checkpoint"


class InitSourceError(GanrayError, RuntimeError):
    """A model.init_from that cannot start the job; the message names the source and why."""


def resolve(client, spec: JobSpec, resolution: int) -> dict[str, str]:
    """The lineage params of the job's source ({} without model.init_from): checked, or InitSourceError."""
    if spec.model.init_from is None:
        return {}
    source = parse_source(spec.model.init_from)
    if source.job == spec.name:  # --fresh would delete the very checkpoint it starts from
        raise InitSourceError(f"model.init_from=job:{spec.name} names this job itself; start from a registered "
                              "version of it (NAME/VERSION keeps its checkpoint) or from another job")
    lineage = _from_job(client, source.job) if source.job else _from_version(client, source)
    _check(lineage[CHECKPOINT_PARAM], source, spec, resolution)
    return lineage


def recorded_checkpoint(run) -> str | None:
    """The source checkpoint a run recorded at its first start (None: it starts from scratch)."""
    return run.data.params.get(CHECKPOINT_PARAM)


def lineage_of(params: dict[str, str]) -> dict[str, str]:
    """The lineage keys among a run's params (what each of its versions is tagged with)."""
    return {k: v for k, v in params.items() if k.startswith(PREFIX)}


def _from_version(client, source: InitSource) -> dict[str, str]:
    from deploy.loader import RegistryError, named_version
    from orchestrator.registry.versions import CHECKPOINT_VERSION_TAG

    try:
        mv = named_version(client, source.model)
    except RegistryError as err:
        raise InitSourceError(f"model.init_from={source}: {err}") from None
    checkpoint = (mv.tags or {}).get(CHECKPOINT_VERSION_TAG)
    if not checkpoint:
        raise InitSourceError(f"model.init_from={source}: version {mv.version} of {mv.name!r} names no training "
                              "checkpoint (it was not registered by a ganray job); start from a job instead")
    return {f"{PREFIX}model": mv.name, f"{PREFIX}version": str(mv.version), f"{PREFIX}run_id": mv.run_id or "",
            CHECKPOINT_PARAM: checkpoint}


def _from_job(client, job: str) -> dict[str, str]:
    run = runs.find_run(client, job)
    if run is None:
        raise InitSourceError(f"model.init_from=job:{job}: no job {job!r} on the tracking server")
    state = state_of(run)
    checkpoint = run.data.tags.get(runs.CHECKPOINT_TAG)
    if state is not State.FINISHED or not checkpoint:
        raise InitSourceError(f"model.init_from=job:{job}: the job is {state.value}; a fine-tune starts from a "
                              "finished job (or a registered version)")
    return {f"{PREFIX}job": job, f"{PREFIX}run_id": run.info.run_id, CHECKPOINT_PARAM: checkpoint}


def _check(checkpoint: str, source: InitSource, spec: JobSpec, resolution: int) -> None:
    """The source checkpoint is there, verifies, loads safely and fits the new job's networks."""
    import pyarrow.fs as pafs

    try:
        fs, path = open_storage(checkpoint)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise InitSourceError(
                f"model.init_from={source}: its training checkpoint {checkpoint} is gone (versions registered "
                "before ganray kept a checkpoint per version lose it when it leaves the job's rotation); pick "
                "a version registered since, or start from its job (job:NAME) if that still has it")
        with local_copy(fs, path) as local:
            verify(local)
            state = load_state(local)
    except CheckpointError as err:
        raise InitSourceError(f"model.init_from={source}: {err}") from None
    except OSError as err:
        raise InitSourceError(f"model.init_from={source}: cannot read {checkpoint}: {type(err).__name__}: "
                              f"{err}") from None
    try:
        changes = architecture_changes(source_fields(state), new_fields(spec.model, resolution))
    except SourceError as err:
        raise InitSourceError(f"model.init_from={source}: {err}") from None
    if changes:
        raise InitSourceError(f"model.init_from={source}: the source has other architecture fields than this "
                              f"spec ({', '.join(changes)}); a fine-tune keeps the source's networks")

