"""The MLflow model registry: registering versions, promotion, aliases, copies."""
