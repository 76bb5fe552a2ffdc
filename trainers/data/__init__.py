"""Datasets: WebDataset tar shards + a manifest, written by ingest and read back by a stream.

- ``ingest/`` the write side: a folder, zip, tar or URL of images (+ labels) into shards in a
  new version folder, the manifest switched last (``ingest/local.py``; ``orchestrator/cluster/
  ingest.py`` runs the same steps as Ray tasks). Also the built-in synthetic faces (``synth.py``).
- ``stream/`` the read side: ``ShardStream``, each rank's part of a dataset in a seeded,
  resumable order, with fetch threads and decode processes. It imports no networks, losses
  or conditioning.
- here, what both sides and the conditioning share: the manifest (``manifest.py``), object
  storage (``storage.py``), the error of an unreadable dataset (``errors.py``), tag spelling
  (``tags.py``) and captions composed from tags (``captions.py``). ``trainers/conditioning``
  imports this package; this package never imports it.

Nothing is imported here, so a decode process that imports ``trainers.data.stream.decode``
does not pay for fsspec and s3fs.
"""
