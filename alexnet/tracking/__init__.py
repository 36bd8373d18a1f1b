"""MLflow: where runs go, parent and member runs, the training's run record, sync after an outage,
models and the registry, run comparison."""
