"""A team's servers: MLflow and Prefect on one PostgreSQL, started, checked and stopped together."""
