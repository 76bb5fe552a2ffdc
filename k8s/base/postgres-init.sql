-- Runs once, when the PostgreSQL volume is first initialised: the second database, for MLflow's
-- users and permissions (the tracking store is the database `mlflow`, created by POSTGRES_DB).
CREATE DATABASE mlflow_auth OWNER mlflow;
