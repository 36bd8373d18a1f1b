"""What a run shows while it runs and once it ends: Prefect artifacts, the stage's log as it comes, MLflow links.

- Per epoch, each member's progress artifact (`member-N-progress`): the share of train.epochs done,
  and "member-N epoch k/N, ETA ..." as the epoch log line says it (`EpochProgress`, an on_epoch hook).
- At the end of training and of evaluation, a table artifact of the figures and a link artifact to
  the MLflow run (`report_training`, `report_evaluation`), in the model-training view of MLflow's UI.
- `stream_lines` runs a command and hands on each line of its output as it is written, so a stage
  under the pipeline flow shows its log in the Prefect run while it runs, not after it ends.

All of it is best-effort: a Prefect server that fails to take an artifact warns once, never fails
the training (the DVC outputs and MLflow are the record).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet.core.layout import VIEWS, member_name
from alexnet.tracking.credentials import redact

if TYPE_CHECKING:  # the pipeline flow streams a stage's log without loading the training code
    from alexnet.pipeline.train import MemberHook

log = logging.getLogger(__name__)

# Where the README's `mlflow ui` serves a local store (sqlite:///mlflow.db); a server URI is its own UI.
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
# MLflow 3's UI opens an experiment in the view this query names (else the one last picked in the browser,
# GenAI's by default); the experiment's `mlflow.experimentKind` tag picks it for links inside the UI.
TRAINING_VIEW = "workflowType=machine_learning"
TRAIN_COLUMNS = ("epoch", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "lr", "images_per_s")


def on_terminal() -> bool:
    """Whether someone watches this process's error stream: progress bars there, none in a log file."""
    return sys.stderr is not None and sys.stderr.isatty()


def bars_on_terminal_only() -> None:
    """MLflow's artifact bars (a model's download when it is logged) drawn on a terminal only: its own
    switch is on by default, terminal or not, and fills a log file with carriage-return redraws."""
    if not on_terminal():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read at each use; children inherit


def eta_text(seconds: float) -> str:
    """The epoch log line's way of saying the time left: "ETA 1m41s", "ETA 2h05m"."""
    left = int(seconds)
    return f"ETA {left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"ETA {left // 60}m{left % 60:02d}s"


def progress_key(index: int) -> str:
    """The progress artifact's key (Prefect allows lowercase letters, digits and dashes)."""
    return f"{member_name(index)}-progress"


class EpochProgress:
    """An on_epoch hook (alexnet/pipeline/train.py's MemberHook): each member's progress artifact, created
    at its first epoch and updated after each one; then the hook it wraps, if any.

    It runs in the member's task (a thread, a process of its own, or a Ray worker), so the artifact
    belongs to that task run and its flow run; it pickles with its artifact ids, one set per process.
    """

    def __init__(self, then: MemberHook | None = None):
        self.then = then
        self._artifacts: dict[int, Any] = {}
        self._failed = False

    def __call__(self, index: int, row: dict[str, float]) -> None:
        if not self._failed:
            try:
                self._show(index, row)
            except Exception as err:  # noqa: BLE001 - a progress display must never fail the training
                self._failed = True
                _warn("Prefect progress artifact for %s is off (%s: %s)", member_name(index), type(err).__name__, err)
        if self.then is not None:
            self.then(index, row)

    def _show(self, index: int, row: Mapping[str, float]) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        epoch, epochs = int(row["epoch"]), int(row.get("epochs", row["epoch"]))
        eta = "done" if epoch >= epochs else eta_text(row["eta_s"]) if "eta_s" in row else ""
        text = f"{member_name(index)} epoch {epoch}/{epochs}" + (f", {eta}" if eta else "")
        share = 100.0 * min(epoch / max(epochs, 1), 1.0)
        if index in self._artifacts:
            update_progress_artifact(self._artifacts[index], share, description=text)
        else:
            self._artifacts[index] = create_progress_artifact(share, key=progress_key(index), description=text)


def mlflow_run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI, model-training view: the server itself, or the README's `mlflow ui`."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI
    return f"{redact(base)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def _ui_note(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return ""
    return (f" (start the UI in the project: `mlflow ui --backend-store-uri {redact(uri)} --host 127.0.0.1 "
            f"--port 5000`)")


def _link(uri: str, run_id: str, text: str, key: str) -> None:
    from mlflow import MlflowClient
    from prefect.artifacts import create_link_artifact

    experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    create_link_artifact(mlflow_run_link(uri, experiment_id, run_id), link_text=text, key=key,
                         description=f"The MLflow run{_ui_note(uri)}")


def training_table(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per member: its seed, epochs and last epoch's figures (speed included: this is no DVC output)."""
    rows = []
    for result in results:
        final = result.get("final") or {}
        rows.append({"member": result["name"], "seed": result.get("seed"),
                     **{k: _rounded(final[k]) for k in TRAIN_COLUMNS if k in final}})
    return rows


def evaluation_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per member and the ensemble: top-1 and top-5 error of each view."""
    def row(name: str, figures: Mapping[str, Any]) -> dict[str, Any]:
        return {"model": name, **{f"{view}.{k}": _rounded(figures[view][k]) for view in VIEWS if view in figures
                                  for k in ("top1_err", "top5_err")}}

    return [*(row(name, figures) for name, figures in metrics.get("members", {}).items()),
            row("ensemble", metrics)]


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def report_training(results: Sequence[Mapping[str, Any]], tracking_state: Mapping[str, Any]) -> None:
    """The training's table and the link to its MLflow parent run, as artifacts of the flow run."""
    from prefect.artifacts import create_table_artifact

    def report() -> None:
        create_table_artifact(training_table(results), key="training", description="Each member's last epoch")
        _link(tracking_state["uri"], tracking_state["parent_run"], "the ensemble's MLflow run", "training-mlflow")

    _best_effort("the training's artifacts", report)


def report_evaluation(metrics: Mapping[str, Any], tracking_state: Mapping[str, Any]) -> None:
    """The evaluation's table (members and ensemble, both views) and the link to the MLflow parent run."""
    from prefect.artifacts import create_table_artifact

    def report() -> None:
        create_table_artifact(evaluation_table(metrics), key="evaluation",
                              description="Top-1 and top-5 error on val, centre crop and ten patches")
        _link(tracking_state["uri"], tracking_state["parent_run"], "the ensemble's MLflow run", "evaluation-mlflow")

    _best_effort("the evaluation's artifacts", report)


def _best_effort(what: str, call: Callable[[], None]) -> None:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the outputs are written; a display failing must not fail them
        _warn("Prefect: %s were not created (%s: %s)", what, type(err).__name__, err)


def _warn(message: str, *args: Any) -> None:
    """A warning in the Prefect run's log (and so on the console) when in a run, else in this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        get_run_logger().warning(message, *args)
    except MissingContextError:
        log.warning(message, *args)


def stream_lines(cmd: Sequence[str], cwd: str | Path, emit: Callable[[str], None]) -> int:
    """Run `cmd` (an argument list) in `cwd`; each line of its output and error, to `emit` as it is
    written; its exit code. Python children write unbuffered, so a line is not held back until the end."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n").rsplit("\r", 1)[-1]  # a redrawn line: its last state
            if line.strip():
                emit(line)
    return proc.returncode
