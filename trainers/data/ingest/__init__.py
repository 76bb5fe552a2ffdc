"""The write side of datasets: ingest of images (+ labels) into WebDataset shards and a manifest.

The steps, in order, each public and shared by the local ingest (``local.py``) and ``--ray``
ingest (``orchestrator/cluster/ingest.py``):

- ``inputs.py`` the settings (``IngestJob``) checked, the labels read (``labels.py``), the
  source opened (``sources.py``), the candidates listed;
- ``chunk.py`` the per-image processing of a chunk of candidates (``images.py``: decode,
  RGB, crop, resize, encode) into shards (``writer.py``);
- ``report.py`` the end: the version published (``versions.py``: a new version folder, the
  manifest switched last, old versions collected) and ``ingest_report.json`` written.

``synth.py`` draws the built-in synthetic faces: a source folder for ingest. Nothing is
imported here, so ingest's worker processes (``images.process_member``) import only numpy
and Pillow.
"""
