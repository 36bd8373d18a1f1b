"""Model export and the registry: logged models that load without this repo, '@champion' on the best.

Models are logged with MLflow's pytorch flavor in the "pt2" format (torch.export): the archive
holds the graph and the weights, so `mlflow.pytorch.load_model("models:/<name>@champion")` needs
neither this repo nor pickle. torch.jit.trace/script are deprecated in torch 2.14 and MLflow only
saves ScriptModules via its pickle path, whose loading is refused unless
MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set. Logged models output class probabilities (N, C).

Every function takes the `Tracker` (tracking.py) whose client and experiment it uses.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.tracking.runs import Tracker
from alexnet.training.metrics import average_probs, mean_softmax

log = logging.getLogger(__name__)


def example_batch(crop_size: int, views: int = 0) -> torch.Tensor:
    """Zeros shaped like the model's input, a batch of two (torch.export needs N >= 2 to keep N dynamic)."""
    return torch.zeros(2, *((views,) if views else ()), 3, crop_size, crop_size)


class SoftmaxAverage(nn.Module):
    """§6: class probabilities averaged over members (one member: that member's softmax).

    With `views`, the input is (N, V, 3, c, c), e.g. §4.1's ten patches, and each member's
    probabilities are averaged over the views too.
    """

    def __init__(self, members: Sequence[nn.Module], views: bool = False):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.views = views

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, c, c) or (N, V, 3, c, c) -> (N, C)
        # The evaluate stage's arithmetic: each member's softmax averaged over its views
        # (train.predict), then the members' probabilities averaged (evaluate.ensemble_report).
        views = images.shape[1] if self.views else 1
        flat = images.reshape(-1, *images.shape[-3:])
        return average_probs([mean_softmax(m(flat).reshape(images.shape[0], views, -1), dim=1)
                              for m in self.members])


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


def log_model(tracker: Tracker, run_id: str, model: nn.Module, example: torch.Tensor, name: str = "model", *,
              softmax: bool = True) -> str:
    """Log `model` (logits -> probabilities if `softmax`) as a pt2 model of run `run_id`; its URI.

    `example` is an input batch (N >= 2, so the batch dimension is exported as dynamic). Pass a
    CPU, single-device instance in any mode: it is exported in eval mode. Weights that this
    experiment already holds as a logged model (a retried task; a one-member ensemble, which is
    its member) are not logged again: that model's URI is returned (tag "weights_sha256").
    A forward that torch.export fixes to the example's batch size is refused (ValueError). The
    paper net's fast LRN is such a forward: log a copy built with model.lrn_impl="torch"
    (same formula, no weights of its own) until alexnet/model/lrn.py has an export path.
    """
    if example.dim() < 1 or example.shape[0] < 2:
        raise ValueError(f"example batch must hold at least 2 images (got shape {tuple(example.shape)}): "
                         "torch.export fixes a batch dimension of 1")
    net = SoftmaxAverage([model]) if softmax else model
    digest = weights_fingerprint(net, example)
    existing = _logged_model(tracker, digest)
    if existing is not None:
        log.info("the weights of %s (run %s) are already logged as %s; not logging them again",
                 name, run_id, existing)
        return existing
    return _log_pt2(tracker, run_id, net, example, name, digest)


def _logged_model(tracker: Tracker, digest: str) -> str | None:
    from mlflow.entities import LoggedModelStatus

    found = tracker.client.search_logged_models(
        [tracker.experiment_id], filter_string=f"tags.weights_sha256 = '{digest}'")
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return f"models:/{ready[0].model_id}" if ready else None


def _log_pt2(tracker: Tracker, run_id: str, net: nn.Module, example: torch.Tensor, name: str, digest: str) -> str:
    import mlflow.pytorch
    from mlflow.models import infer_signature

    was_training = net.training
    net.eval()  # dropout off: the exported graph is the inference graph
    try:
        with torch.no_grad():
            output = net(example)
        signature = infer_signature(example.numpy(), output.numpy())  # batch dim -1: dynamic

        def save(local: Path, mlflow_model: Any) -> None:
            mlflow.pytorch.save_model(
                net, str(local), mlflow_model=mlflow_model, signature=signature,
                input_example=example.numpy(), serialization_format="pt2",
                # Pinned here: MLflow's inference would load the model in a subprocess.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            _check_exported(local / "data" / "model.pt2", net, example, name)

        return logged_model(tracker, run_id, name, {"weights_sha256": digest}, save)
    finally:
        net.train(was_training)


def logged_model(tracker: Tracker, run_id: str, name: str, tags: dict[str, str],
                 save: Callable[[Path, Any], None]) -> str:
    """A LoggedModel of run `run_id` whose files `save(folder, mlflow_model)` writes; its URI (models:/m-...).

    MlflowClient's spelling of mlflow.<flavor>.log_model, which would read the process-global
    tracking URI and active run: create the LoggedModel, save it locally, upload, mark it READY
    (FAILED if anything on the way raises).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    logged = tracker.client.create_logged_model(tracker.experiment_id, name=name, source_run_id=run_id, tags=tags)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "model"
            save(local, Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                              model_id=logged.model_id))
            tracker.client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        tracker.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    tracker.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    tracker.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return f"models:/{logged.model_id}"


def register(tracker: Tracker, model_uri: str, registered_name: str, metric_value: float, *,
             metric_name: str = "ten_crop.top1_err", alias: str = "champion", lower_is_better: bool = True,
             data: dict[str, str] | None = None, description: str = "") -> str:
    """Register `model_uri` as a new version; move `alias` to it if it beats the holder's metric.

    The metric and `data` (the data version and val set it was measured on) are stored as version
    tags. '@champion' is the best version measured on the same data as the holder's: a tie keeps
    the earlier holder; a version of other data (the same dataset preprocessed anew, another val
    set) is not comparable, and a new data version starts a new competition (it takes the alias).
    The registered model is the caller's per dataset (alexnet/tracking/lifecycle.py's names), so a
    run on another dataset never takes or keeps this one's alias. Returns the new version number.
    Aliases, not the deprecated stages. Two processes registering at once may both see the old
    holder; the later alias write wins (the evaluate flow registers one ensemble at a time).
    """
    from mlflow.exceptions import MlflowException

    try:
        tracker.client.create_registered_model(registered_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source, run_id, model_id = model_uri, None, None
    if re.fullmatch(r"models:/m-[0-9a-f]+", model_uri):
        # Resolved here with our client: MLflow's SQL registry would look the logged model up
        # through the process-global tracking URI (a TODO in its create_model_version).
        model_id = model_uri.removeprefix("models:/")
        logged = tracker.client.get_logged_model(model_id)
        source, run_id = logged.artifact_location, logged.source_run_id
    data = dict(data or {})
    version = tracker.client.create_model_version(
        registered_name, source=source, run_id=run_id, model_id=model_id, description=description or None,
        tags={"metric_name": metric_name, "metric_value": repr(float(metric_value)), "model_uri": model_uri, **data},
    )
    if _beats_holder(tracker, registered_name, alias, float(metric_value), metric_name, lower_is_better, data):
        tracker.client.set_registered_model_alias(registered_name, alias, version.version)
        log.info("%s version %s is now @%s (%s %.4f)", registered_name, version.version, alias,
                 metric_name, metric_value)
    return str(version.version)


def champion(tracker: Tracker, registered_name: str, alias: str = "champion"):
    """The ModelVersion holding `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        model = tracker.client.get_registered_model(registered_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    version = model.aliases.get(alias)
    return None if version is None else tracker.client.get_model_version(registered_name, str(version))


def _beats_holder(tracker: Tracker, name: str, alias: str, value: float, metric_name: str,
                  lower_is_better: bool, data: dict[str, str]) -> bool:
    holder = champion(tracker, name, alias)
    if holder is None:
        return True
    held_data = {k: holder.tags.get(k) for k in data}
    if held_data != data:
        log.info("%s@%s (version %s) was measured on other data (%s); the new version starts a new competition",
                 name, alias, holder.version, held_data)
        return True
    held = holder.tags.get("metric_value")
    if held is None or holder.tags.get("metric_name") != metric_name:
        log.warning("%s@%s (version %s) has no %s tag; the new version takes the alias",
                    name, alias, holder.version, metric_name)
        return True
    return value < float(held) if lower_is_better else value > float(held)
