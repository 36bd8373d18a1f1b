"""The pipeline's steps as plain functions that the Prefect flows run: train an ensemble, evaluate an
ensemble, where members run, the checks before work, the check of outputs against their hashes."""
