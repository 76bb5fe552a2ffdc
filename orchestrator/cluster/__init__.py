"""Where the cluster is and how to reach it from any machine: endpoints, Ray's Job API, submission, Serve, ingest tasks."""
