"""One way to ask a trained model about images, whatever holds it: the train stage's folder or a logged model.

`open_model("models/")` builds the classifier from the train stage's files (with the params, shards
and prepared class table beside them); `open_model("models:/alexnet-ensemble.synthetic@champion")`
(or any MLflow model URI, a runs:/ URI, a local model folder holding an MLmodel file) loads the
registered pyfunc. Both answer `top(images, k, views)` the same way, one image at a time where an
image cannot be read, so one bad file never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.core.layout import CLASSES_FILE

Found = list[dict[str, Any]]  # the top classes of one image: wnid, name, probability


@dataclass
class Answer:
    """One image's answer: its top classes, or why it could not be read."""

    image: str
    top: Found | None = None
    error: str | None = None


@dataclass
class Model:
    """A trained model to ask: `ask(images, k, views)` -> top classes per image (raises on a bad image)."""

    ask: Callable[[Sequence[str], int, str], list[Found]]
    classes: list[str]  # the wnids it knows, in label order
    default_views: str
    source: str

    def top(self, images: Sequence[str], k: int = 5, views: str | None = None) -> list[Answer]:
        """Every image's answer, in order: a batch at once, one by one where one image fails."""
        views = views or self.default_views
        try:
            return [Answer(str(i), top) for i, top in zip(images, self.ask(images, k, views))]
        except (OSError, ValueError) as err:
            if len(images) == 1:
                return [Answer(str(images[0]), error=_one_line(err))]
        return [a for i in images for a in self.top([i], k, views)]


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    return text[0] if text else type(err).__name__


def open_model(model: str, params_file: str | Path = "params.yaml", shards: str | Path = "data/shards",
               prepared: str | Path = "data/prepared") -> Model:
    """The model at `model`: the train stage's models folder, an MLflow model URI or folder, or "champion":
    the registry's champion for the dataset of `params_file`."""
    if model == "champion":
        model = champion_uri(params_file)
    path = Path(model)
    if path.is_dir() and not (path / "MLmodel").is_file():
        return _from_training(path, Path(params_file), Path(shards), Path(prepared))
    return _from_mlflow(model, Path(params_file))


def _from_training(models: Path, params_file: Path, shards: Path, prepared: Path) -> Model:
    from alexnet.config.params import load_params
    from alexnet.serving.bundle import classifier_from_training

    params = load_params(params_file)
    classifier = classifier_from_training(params, models, shards, prepared / CLASSES_FILE)
    views = "ten" if params.evaluate.ten_crop else "center"
    return Model(lambda images, k, v: classifier.classify(images, k, v), [c.wnid for c in classifier.classes],
                 views, f"{models} (with {shards} and {prepared / CLASSES_FILE})")


def _from_mlflow(uri: str, params_file: Path) -> Model:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    if uri.startswith("models:/") or uri.startswith("runs:/"):
        mlflow.set_tracking_uri(_tracking_uri(params_file))
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as err:
        raise FileNotFoundError(f"{uri}: {_one_line(err)}") from None
    python_model = loaded.unwrap_python_model()
    classes = [c.wnid for c in python_model.classifier.classes]

    def ask(images: Sequence[str], k: int, views: str) -> list[Found]:
        try:
            out = loaded.predict(pd.DataFrame({"path": [str(i) for i in images]}), params={"top": k, "views": views})
        except MlflowException as err:
            raise ValueError(_one_line(err)) from None
        return [[{"wnid": w, "name": n, "probability": p} for w, n, p in zip(r.wnids, r.names, r.probabilities)]
                for r in out.itertuples()]

    return Model(ask, classes, python_model.default_views, uri)


def _tracking_uri(params_file: Path) -> str:
    from alexnet.config.params import load_params
    from alexnet.tracking.store import resolve_tracking_uri

    param_uri = load_params(params_file).tracking.uri if params_file.is_file() else None
    return resolve_tracking_uri(param_uri, params_file.resolve().parent)


def champion_uri(params_file: str | Path = "params.yaml") -> str:
    """models:/<registered model of this dataset>@champion, from the params (one champion per dataset)."""
    from alexnet.config.params import load_params
    from alexnet.tracking.lifecycle import registered_name

    params = load_params(params_file)
    return f"models:/{registered_name(params.tracking, params.data)}@champion"
