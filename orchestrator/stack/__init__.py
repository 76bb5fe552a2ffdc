"""The embedded local stack (``ganray local``): Ray head, MLflow server, S3 server, their private files."""
