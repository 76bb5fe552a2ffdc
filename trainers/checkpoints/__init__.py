"""Stored checkpoints, one owner: the workers write and resume them, the driver and the registry read them.

It lives in ``trainers/`` because the workers need it (and ``trainers/`` imports no ``orchestrator/``);
the driver, the Train controller and the registry import it from here. One job per module:

- ``format``: the files of one checkpoint (``state.pt``, ``rank_R.pt``, ``grid.png``, the per-rank
  sha256 indexes), ``verify``, weights-only loads, ``generator_from_checkpoint``.
- ``layout``: the names in a job's storage folder (checkpoint folders, ``evaluated/`` kept copies, Ray
  Train's own files).
- ``storage``: where a job's checkpoints live (``Storage``, ``resolve_storage``, ``checkpoint_uri``) and
  ``open_storage``, a URL's pyarrow filesystem.
- ``listing``: the one listing of a job's checkpoints (pyarrow's filesystem API, for every process).
- ``stored_spec``: the one reader of the spec a stored checkpoint was written under.
- ``copies``: a local copy of a checkpoint folder (a download where needed), the kept copy of an evaluated one.
- ``deletion``: exactly a job's checkpoints for ``--fresh``, or one copy no longer needed.
- ``resume``: which checkpoint a restarted worker group restores (rank 0 chooses, every rank follows).

Nothing is imported here: import the module that owns a name.
"""
