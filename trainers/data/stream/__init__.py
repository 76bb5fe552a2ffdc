"""The read side of datasets: ``ShardStream`` (``shard_stream.py``), each rank's part of an ingested
dataset in a seeded, resumable order.

Behind it: the order (``order.py``), shard fetching with retries and a local cache
(``shards.py``, presigned GETs ``signed_get.py``), the read-ahead pipeline (``pipeline.py``),
tar indexing (``tarindex.py``) and the decode processes (``decode_pool.py``, ``decode.py``).
It imports no networks, losses or conditioning. Nothing is imported here, so a decode
process that imports ``trainers.data.stream.decode`` does not pay for fsspec and s3fs.
"""
