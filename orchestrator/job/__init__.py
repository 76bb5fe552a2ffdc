"""The driver side of one job (``ganray run``): spec files, the MLflow run, its lifecycle, locks, stops, Ray Train."""
