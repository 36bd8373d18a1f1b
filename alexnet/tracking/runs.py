"""MLflow runs and metrics: one parent run per ensemble, one nested run per member.

Where runs go and the fail-fast check are in alexnet/tracking/store.py. For a local
store the experiment is created with its artifacts under `<project root>/mlartifacts/<experiment>`
(`local_artifact_root`), so nothing lands in a stray ./mlruns; an http(s) server keeps its own.

Failure policy (the DVC outputs are the record; MLflow is a view of them):
- Before training, `check_tracking(uri)` fails fast with a message naming the store and the fix
  (a dead server, an unwritable folder, a SQLite database another process holds locked).
- During training, `Tracker.log_epoch` is best-effort: the first failure logs ONE warning and
  stops per-epoch logging for that run (each call to a dead server would stall on MLflow's HTTP
  retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES/TIMEOUT). Training goes on.
- At the end of a member, whose files are then complete, logging its files and closing its run
  are best-effort too (`Tracker.best_effort`): a store that fails there warns, never fails the member.
- `python -m alexnet.tracking sync` (alexnet/tracking/sync.py) re-logs histories and metrics from the
  reports once the store is back, without duplicating a step, and closes runs left RUNNING.
- Params, evaluation metrics, models and the registry raise: a run that claims to be tracked
  must not be silently incomplete.
- A parent run carries its stage's owner (host, pid, start time); the next parent opened in the
  same experiment ends, as KILLED, every parent whose owner died on this host without closing it.

Every call names its run id (MlflowClient, no fluent active run), so members trained in threads
or processes log safely; a `Tracker` pickles as (uri, experiment, artifact_root). What the UI
reads is written under MLflow's own names: the experiment's kind (`mlflow.experimentKind`: the
model-training view, not GenAI's), each run's source and git commit (`mlflow.source.*`: the
Source and Version columns) and the data it trained on as a dataset input (the Dataset column).
Model export and the registry are in registry.py.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.config.params import flatten_mapping
from alexnet.tracking.credentials import redact
from alexnet.tracking.owners import OWNER_TAG, PARENT_TAG, end_orphaned_parents, owner
from alexnet.tracking.store import TrackingUnavailable, _is_local

log = logging.getLogger(__name__)

# The experiment's kind picks the UI's view; without it MLflow 3's UI infers one, and may open GenAI's.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
TRAINING_CONTEXT = "training"  # mlflow.data.context of the shards a run trained on
EPOCH_METRICS = ("train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "lr", "images_per_s")

# Per-request chatter (table creation, alembic migrations) that says nothing about our runs.
NOISY_LOGGERS = ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration")


def provenance_tags(*, source: str, git_commit: str, data_version: str | None, dataset: str,
                    devices: Sequence[str]) -> dict[str, str]:
    """The tags every run carries: where its code, data and compute came from.

    Source and commit under MLflow's own keys (mlflow.utils.mlflow_tags), which the UI shows;
    `git_commit` as provenance.git_commit gives it: "<sha>[-dirty]", or "unknown".
    """
    commit = git_commit.removesuffix("-dirty")
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL",
            "data_version": data_version or "unknown", "dataset": dataset, "devices": ",".join(devices)}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
        tags["mlflow.source.git.dirty"] = str(git_commit.endswith("-dirty")).lower()
    return tags


def flatten_metrics(nested: Mapping[str, Any]) -> dict[str, float]:
    """{"ensemble": {"center": {"top1_err": 0.3}}} -> {"ensemble.center.top1_err": 0.3}; numbers only."""
    return {name: float(value) for name, value in flatten_mapping(nested).items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def one_line(err: BaseException) -> str:
    """The first line of an error (MLflow's database errors go on with the SQL statement)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    # Lists as JSON; 6000 characters is MLflow's limit on a param value. A server URI's password is
    # never a param (tracking.uri as the user wrote it may carry one: alexnet/tracking/credentials.py).
    return {name: redact(json.dumps(v) if isinstance(v, list | tuple | dict) else str(v))[:6000]
            for name, v in flatten_mapping(params).items()}


class Tracker:
    """A thin MlflowClient wrapper that names every run by id.

    Pickles as (uri, experiment, artifact_root), so a Prefect task or a worker process can be
    handed one; the client and the experiment id are made on first use in each process.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None):
        self.uri = uri
        self.experiment = experiment
        self.artifact_root = Path(artifact_root) if artifact_root is not None else None
        self._client = None
        self._experiment_id: str | None = None
        self._epoch_logging_failed: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "experiment": self.experiment, "artifact_root": self.artifact_root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["experiment"], state["artifact_root"])

    def __repr__(self) -> str:
        return f"Tracker({self.uri!r}, {self.experiment!r})"

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            for name in NOISY_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
            # Its ERROR is a full traceback of an exception its caller gets anyway (and here either
            # raises or turns into one warning line), e.g. for every call to a locked database.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The experiment's id, created on first use (with its artifacts under artifact_root)."""
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=self._artifact_location(),
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                except MlflowException as err:  # created meanwhile by another member's process?
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    raise TrackingUnavailable(
                        f"experiment {self.experiment!r} at {self.uri} is deleted: restore it "
                        f"(`mlflow experiments restore`) or set another tracking.experiment")
                self._experiment_id = found.experiment_id
                if EXPERIMENT_KIND_TAG not in found.tags:  # made before the kind was set; a user's choice stays
                    self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return self._experiment_id

    def _artifact_location(self) -> str | None:
        if self.artifact_root is None or not _is_local(self.uri):
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.experiment)
        return (self.artifact_root.resolve() / safe).as_uri()

    # --- runs -------------------------------------------------------------------------------

    def start_parent(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """A parent run for one ensemble: every param (flattened, as strings) and the tags; its id."""
        end_orphaned_parents(self.client, self.experiment_id)  # parents of killed stages: never left RUNNING
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={"role": "ensemble", OWNER_TAG: owner(), **tags})
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def start_member(self, parent_id: str, member: str, params: Mapping[str, Any],
                     tags: Mapping[str, str]) -> str:
        """The nested run of `member` under `parent_id`; a retried member gets its earlier run back.

        A resumed run is set RUNNING again; its params must not change (MLflow params are immutable).
        """
        run_id = self.find_member(parent_id, member)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self._epoch_logging_failed.discard(run_id)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=member, tags={
                PARENT_TAG: parent_id, "role": "member", "member": member, **tags,
            }).info.run_id
        self._log_params(run_id, params)
        return run_id

    def find_member(self, parent_id: str, member: str) -> str | None:
        """The id of `member`'s nested run under `parent_id`, if one was started."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' AND tags.member = '{member}'",
            max_results=1, order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def best_effort(self, what: str, run_id: str, call, *args: Any) -> bool:
        """call(*args) for work whose result is already on disk: a failure warns, never raises.

        For the end of a member (its files are written) and closing runs; `python -m
        alexnet.tracking sync` re-logs what was missed once the store is back.
        """
        try:
            call(*args)
            return True
        except Exception as err:  # noqa: BLE001 - the store's failure must not fail finished work
            log.warning("MLflow: %s for run %s at %s failed (%s: %s); the files on disk are complete, "
                        "re-log with `python -m alexnet.tracking sync` once the store is back",
                        what, run_id, self.uri, type(err).__name__, one_line(err))
            return False

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten_params(params)
        # MlflowClient.log_batch splits into requests of at most 100 params.
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(flat.items())])

    # --- metrics ----------------------------------------------------------------------------

    def log_epoch(self, run_id: str, row: Mapping[str, float], step: int) -> None:
        """Best-effort per-epoch metrics (a `train.fit` row): never raises, warns once per run.

        After a failure the run's per-epoch logging stops (each call to a dead server would stall
        training on MLflow's retries); the rows stay in the checkpoint's history, so
        `log_history(run_id, history)` can re-log them once the server is back.
        """
        if run_id in self._epoch_logging_failed:
            return
        try:
            self.log_history(run_id, [{**row, "epoch": step}])
        except Exception as err:  # noqa: BLE001 - logging must never end a training run
            self._epoch_logging_failed.add(run_id)
            log.warning(
                "MLflow per-epoch logging to %s failed for run %s at step %d (%s: %s); training goes on, "
                "per-epoch logging for this run is off. The history is kept in the checkpoint and the "
                "reports: re-log it with `python -m alexnet.tracking sync` (Tracker.log_history) once it is back.",
                self.uri, run_id, step, type(err).__name__, one_line(err),
            )

    def log_history(self, run_id: str, history: Sequence[Mapping[str, float]]) -> None:
        """Per-epoch rows ({"epoch": 1, "train_loss": ..., ...}) as metric histories, step = epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(row[key]), now, int(row["epoch"]))
                   for row in history for key in EPOCH_METRICS if key in row]
        self.client.log_batch(run_id, metrics=metrics)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
        """A nested metrics dict (evaluate's metrics.json) flattened: "ensemble.center.top1_err"."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        flat = flatten_metrics(metrics)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in sorted(flat.items())])

    def log_artifacts(self, run_id: str, paths: Sequence[Path], artifact_path: str | None = None) -> None:
        """Files and folders (reports, metrics.json, plots) as run artifacts.

        Pass no checkpoints: the weights travel once, in the logged model.
        """
        for path in map(Path, paths):
            if path.is_dir():
                sub = f"{artifact_path}/{path.name}" if artifact_path else path.name
                self.client.log_artifacts(run_id, str(path), sub)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path)
            else:
                raise FileNotFoundError(f"artifact {path} does not exist (run {run_id})")

    # --- inputs -----------------------------------------------------------------------------

    def log_dataset(self, run_id: str, *, name: str, digest: str, source: str,
                    tags: Mapping[str, str] | None = None, context: str = TRAINING_CONTEXT) -> None:
        """The data a run read as its dataset input (metadata only: name, digest, where it lies).

        Logging the same dataset into the same run again (a retried member) adds nothing.
        """
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest, source_type="local",
                          source=LocalArtifactDatasetSource(str(source)).to_json())
        input_tags = [InputTag("mlflow.data.context", context),
                      *(InputTag(k, v) for k, v in sorted((tags or {}).items()))]
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, input_tags)])
