"""MLflow tracking: one parent run per ensemble, one nested run per member, the ensemble in the registry.

Where runs go (`resolve_tracking_uri`): params' tracking.uri, else $MLFLOW_TRACKING_URI, else
`sqlite:///<project root>/mlflow.db`. Relative sqlite/file paths are resolved against the project
root, never the cwd. For a local store the experiment is created with its artifacts under
`<project root>/mlartifacts/<experiment>` (`local_artifact_root`), so nothing lands in a stray
./mlruns; an http(s) server keeps its own artifact store.

Failure policy (the DVC outputs are the record; MLflow is a view of them):
- Before training, `check_tracking(uri)` fails fast with a message naming the URI and the fix.
- During training, `Tracker.log_epoch` is best-effort: the first failure logs ONE warning and
  stops per-epoch logging for that run (each call to a dead server would stall on MLflow's HTTP
  retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES/TIMEOUT). Training goes on; the per-epoch history
  stays in the member's checkpoint (`train.fit` history) and the final metrics in metrics.json,
  so they can be re-logged later with `Tracker.log_history` and `Tracker.log_metrics`.
- Everything else (params, final metrics, models, registry) raises: a run that claims to be
  tracked must not be silently incomplete.

Every call names its run id (MlflowClient, no fluent active run), so members trained in threads
or processes log safely; a `Tracker` pickles as (uri, experiment, artifact_root).

Models are logged with MLflow's pytorch flavor in the "pt2" format (torch.export): the archive
holds the graph and the weights, so `mlflow.pytorch.load_model("models:/<name>@champion")` needs
neither this repo nor pickle. torch.jit.trace/script are deprecated in torch 2.14 and MLflow only
saves ScriptModules via its pickle path, whose loading is refused unless
MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set. Logged models output class probabilities (N, C).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from alexnet.config import flatten_mapping

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
EPOCH_METRICS = ("train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "lr", "images_per_s")
PROBE_TIMEOUT_S = 3.0

# Per-request chatter (table creation, alembic migrations) that says nothing about our runs.
for _noisy in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; the message names the URI and how to fix it."""


def resolve_tracking_uri(param_uri: str | None, project_root: Path) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db (absolute).

    The param wins over the environment: params.yaml is the record of a run, so a value written
    there must not be overridden by a shell variable left over from another session.
    """
    root = Path(project_root).resolve()
    uri = param_uri or os.environ.get(ENV_URI) or f"sqlite:///{DB_NAME}"
    return _absolute(uri, root)


def _absolute(uri: str, root: Path) -> str:
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")  # "sqlite:////abs" leaves "/abs"
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{root / path}"
        return uri
    scheme = urlparse(uri).scheme
    if scheme == "file":
        path = Path(urlparse(uri).path)
        return (path if path.is_absolute() else root / path).as_uri()
    if scheme == "" and not Path(uri).is_absolute():
        return str(root / uri)
    return uri


def local_artifact_root(uri: str, project_root: Path) -> Path | None:
    """<root>/mlartifacts for a local store (sqlite, file); None for a server, which has its own."""
    if _is_local(uri):
        return Path(project_root).resolve() / ARTIFACTS_DIR
    return None


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


def check_tracking(uri: str) -> None:
    """Fail fast, before any training, if runs cannot be logged to `uri`.

    http(s): probes the server's /health with a short timeout. sqlite/file: the database's folder
    (or the store folder) must be creatable and writable. Other schemes are not checked.
    """
    scheme = urlparse(uri).scheme
    fix_server = (f"start the server (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db "
                  f"--port {urlparse(uri).port or 5000}`), or unset {ENV_URI} and tracking.uri in params.yaml "
                  f"to log to the project's sqlite:///{DB_NAME}")
    if scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S) as response:
                status = response.status
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is not reachable ({reason}); {fix_server}") from None
        if status != 200:
            raise TrackingUnavailable(f"MLflow tracking server {uri} answered {health} with HTTP {status}; "
                                      f"{fix_server}")
        return
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if path in ("", ":memory:"):
            return
        _check_writable(Path(path).parent, uri, "database folder")
        if Path(path).exists() and not os.access(path, os.W_OK):
            raise TrackingUnavailable(f"tracking database {path} ({uri}) is not writable")
        return
    if scheme in ("file", ""):
        _check_writable(Path(urlparse(uri).path if scheme else uri), uri, "store folder")


def _check_writable(folder: Path, uri: str, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingUnavailable(f"cannot create the tracking {what} {folder} for {uri}: {err}") from None
    if not os.access(folder, os.W_OK):
        raise TrackingUnavailable(f"the tracking {what} {folder} for {uri} is not writable")


def provenance_tags(*, git_commit: str, data_version: str | None, dataset: str,
                    devices: Sequence[str]) -> dict[str, str]:
    """The tags every run carries: where its code, data and compute came from."""
    return {
        "git_commit": git_commit,
        "mlflow.source.git.commit": git_commit,  # shown by the MLflow UI
        "data_version": data_version or "unknown",
        "dataset": dataset,
        "devices": ",".join(devices),
    }


def flatten_metrics(nested: Mapping[str, Any]) -> dict[str, float]:
    """{"ensemble": {"center": {"top1_err": 0.3}}} -> {"ensemble.center.top1_err": 0.3}; numbers only."""
    return {name: float(value) for name, value in flatten_mapping(nested).items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:6000]  # MLflow's limit on a param value


def _flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {name: _param_value(value) for name, value in flatten_mapping(params).items()}


class SoftmaxAverage(nn.Module):
    """§6: class probabilities averaged over members (one member: that member's softmax).

    With `views`, the input is (N, V, 3, c, c), e.g. §4.1's ten patches, and the probabilities
    are averaged over the views too, as `train.predict` does.
    """

    def __init__(self, members: Sequence[nn.Module], views: bool = False):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.views = views

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, c, c) or (N, V, 3, c, c) -> (N, C)
        flat = images.flatten(0, 1) if self.views else images
        probs = torch.stack([m(flat).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return probs.unflatten(0, images.shape[:2]).mean(dim=1) if self.views else probs


def weights_fingerprint(net: nn.Module, example: torch.Tensor) -> str:
    """sha256 over the state dict and the input's shape: the same weights are logged only once."""
    h = hashlib.sha256(repr((type(net).__name__, getattr(net, "views", None), tuple(example.shape[1:]))).encode())
    for key, tensor in sorted(net.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_exported(path: Path, net: nn.Module, example: torch.Tensor, name: str) -> None:
    """The saved pt2 must take another batch size and agree with `net`, before it is uploaded.

    torch.export silently fixes the batch size when forward branches or loops on it in Python
    (a blocked kernel, say); such a model would fail on every other batch size once served.
    """
    batch = torch.cat([example, example[:1]])  # N + 1 images
    with torch.no_grad():
        expected = net(batch)
        try:
            got = torch.export.load(str(path)).module()(batch)
        except Exception as err:  # noqa: BLE001 - re-raised with the cause and the fix
            raise ValueError(
                f"model {name!r} was exported for batch size {example.shape[0]} only ({type(err).__name__}: "
                f"{str(err)[:300]}); its forward depends on the batch size in Python. Give it an "
                f"export path without that (e.g. under torch.compiler.is_exporting())") from err
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        diff = (got - expected).abs().max().item()
        raise ValueError(f"exported model {name!r} differs from the in-memory one by up to {diff:.3g}")


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
                        self.experiment, artifact_location=self._artifact_location())
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
        return self._experiment_id

    def _artifact_location(self) -> str | None:
        if self.artifact_root is None or not _is_local(self.uri):
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.experiment)
        return (self.artifact_root.resolve() / safe).as_uri()

    # --- runs -------------------------------------------------------------------------------

    def start_parent(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """A parent run for one ensemble: every param (flattened, as strings) and the tags; its id."""
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={"role": "ensemble", **tags})
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
                "mlflow.parentRunId": parent_id, "role": "member", "member": member, **tags,
            }).info.run_id
        self._log_params(run_id, params)
        return run_id

    def find_member(self, parent_id: str, member: str) -> str | None:
        """The id of `member`'s nested run under `parent_id`, if one was started."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' AND tags.member = '{member}'",
            max_results=1, order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def members(self, parent_id: str) -> dict[str, str]:
        """{member name: run id} of the nested runs under `parent_id`."""
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
        return {r.data.tags.get("member", r.info.run_name): r.info.run_id for r in runs}

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

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
                "per-epoch logging for this run is off. The history is kept in the checkpoint: re-log it "
                "with Tracker.log_history when the tracking server is back.",
                self.uri, run_id, step, type(err).__name__, err,
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

    # --- models -----------------------------------------------------------------------------

    def log_model(self, run_id: str, model: nn.Module, example: torch.Tensor, name: str = "model", *,
                  softmax: bool = True) -> str:
        """Log `model` (logits -> probabilities if `softmax`) as a pt2 model of run `run_id`; its URI.

        `example` is an input batch (N >= 2, so the batch dimension is exported as dynamic). Pass a
        CPU, single-device instance in any mode: it is exported in eval mode. Weights that this
        experiment already holds as a logged model (a retried task; a one-member ensemble, which is
        its member) are not logged again: that model's URI is returned (tag "weights_sha256").
        A forward that torch.export fixes to the example's batch size is refused (ValueError). The
        paper net's fast LRN is such a forward: log a copy built with model.lrn_impl="torch"
        (same formula, no weights of its own) until alexnet/lrn.py has an export path.
        """
        if example.dim() < 1 or example.shape[0] < 2:
            raise ValueError(f"example batch must hold at least 2 images (got shape {tuple(example.shape)}): "
                             "torch.export fixes a batch dimension of 1")
        net = SoftmaxAverage([model]) if softmax else model
        digest = weights_fingerprint(net, example)
        existing = self._logged_model(digest)
        if existing is not None:
            log.info("the weights of %s (run %s) are already logged as %s; not logging them again",
                     name, run_id, existing)
            return existing
        return self._log_pt2(run_id, net, example, name, digest)

    def log_ensemble(self, run_id: str, members: Sequence[nn.Module], example: torch.Tensor,
                     name: str = "ensemble", *, ten_crop: bool = False) -> str:
        """Log one model averaging the members' softmax (what the registry serves); its URI.

        ten_crop=False: input (N, 3, c, c). ten_crop=True: input (N, 10, 3, c, c), §4.1's patches,
        averaged too; `example` must then be 5-D.
        """
        if ten_crop and example.dim() != 5:
            raise ValueError(f"ten_crop=True takes (N, V, 3, c, c) examples, got shape {tuple(example.shape)}")
        return self.log_model(run_id, SoftmaxAverage(members, views=ten_crop), example, name, softmax=False)

    def _logged_model(self, digest: str) -> str | None:
        from mlflow.entities import LoggedModelStatus

        found = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"tags.weights_sha256 = '{digest}'")
        ready = [m for m in found if m.status == LoggedModelStatus.READY]
        return f"models:/{ready[0].model_id}" if ready else None

    def _log_pt2(self, run_id: str, net: nn.Module, example: torch.Tensor, name: str, digest: str) -> str:
        # MlflowClient spelling of mlflow.pytorch.log_model, which would read the global tracking
        # URI and active run: create the LoggedModel, save it locally, upload, mark it READY.
        import mlflow.pytorch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model, infer_signature

        was_training = net.training
        net.eval()  # dropout off: the exported graph is the inference graph
        try:
            with torch.no_grad():
                output = net(example)
            signature = infer_signature(example.numpy(), output.numpy())  # batch dim -1: dynamic
            logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id,
                                                     tags={"weights_sha256": digest})
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    local = Path(tmp) / "model"
                    mlflow_model = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                                         run_id=run_id, model_id=logged.model_id)
                    mlflow.pytorch.save_model(
                        net, str(local), mlflow_model=mlflow_model, signature=signature,
                        input_example=example.numpy(), serialization_format="pt2",
                        # Pinned here: MLflow's inference would load the model in a subprocess.
                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                    )
                    _check_exported(local / "data" / "model.pt2", net, example, name)
                    self.client.log_model_artifacts(logged.model_id, str(local))
            except BaseException:
                self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
                raise
        finally:
            net.train(was_training)
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        return f"models:/{logged.model_id}"

    def register(self, model_uri: str, registered_name: str, metric_value: float, *,
                 metric_name: str = "ten_crop.top1_err", alias: str = "champion",
                 lower_is_better: bool = True) -> str:
        """Register `model_uri` as a new version; move `alias` to it if it beats the holder's metric.

        The metric is stored as version tags (metric_name, metric_value), so '@champion' is the
        best ensemble registered so far; a tie keeps the earlier holder.
        Returns the new version number; `champion()` tells who holds the alias. Aliases, not the
        deprecated stages. Two processes registering at once may both see the old holder; the
        later alias write wins (ensembles are registered one at a time by the evaluate flow).
        """
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(registered_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source, run_id, model_id = model_uri, None, None
        if re.fullmatch(r"models:/m-[0-9a-f]+", model_uri):
            # Resolved here with our client: MLflow's SQL registry would look the logged model up
            # through the process-global tracking URI (a TODO in its create_model_version).
            model_id = model_uri.removeprefix("models:/")
            logged = self.client.get_logged_model(model_id)
            source, run_id = logged.artifact_location, logged.source_run_id
        version = self.client.create_model_version(
            registered_name, source=source, run_id=run_id, model_id=model_id,
            tags={"metric_name": metric_name, "metric_value": repr(float(metric_value)), "model_uri": model_uri},
        )
        if self._beats_holder(registered_name, alias, float(metric_value), metric_name, lower_is_better):
            self.client.set_registered_model_alias(registered_name, alias, version.version)
            log.info("%s version %s is now @%s (%s %.4f)", registered_name, version.version, alias,
                     metric_name, metric_value)
        return str(version.version)

    def champion(self, registered_name: str, alias: str = "champion"):
        """The ModelVersion holding `alias`, or None."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(registered_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None
        version = model.aliases.get(alias)
        return None if version is None else self.client.get_model_version(registered_name, str(version))

    def _beats_holder(self, name: str, alias: str, value: float, metric_name: str, lower_is_better: bool) -> bool:
        holder = self.champion(name, alias)
        if holder is None:
            return True
        held = holder.tags.get("metric_value")
        if held is None or holder.tags.get("metric_name") != metric_name:
            log.warning("%s@%s (version %s) has no %s tag; the new version takes the alias",
                        name, alias, holder.version, metric_name)
            return True
        return value < float(held) if lower_is_better else value > float(held)
