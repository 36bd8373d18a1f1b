"""The train and evaluate stages' inputs and outputs, as dvc.yaml names them and the stages pass them on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alexnet.core.layout import PREDICTIONS_DIR


@dataclass(frozen=True)
class TrainPaths:
    """The train stage's inputs and outputs (dvc.yaml names them), and the project they belong to."""

    root: Path  # the project: the default tracking store, mlartifacts/, dvc.lock
    prepared: Path
    shards: Path
    models: Path
    history: Path
    checkpoints: Path
    tracking_state: Path  # output: the MLflow run ids, read by the evaluate stage


@dataclass(frozen=True)
class EvalPaths:
    """The evaluate stage's inputs and outputs (dvc.yaml names them)."""

    prepared: Path
    shards: Path
    models: Path
    reports: Path
    metrics: Path
    tracking_state: Path  # input: the training's MLflow run ids

    @property
    def predictions(self) -> Path:
        return self.reports / PREDICTIONS_DIR
