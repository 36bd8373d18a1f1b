"""The trained ensemble as one servable model: built from the train stage's files, saved as an MLflow pyfunc.

`classifier_from_training` assembles a PhotoClassifier from models/, the shards' mean image and the
prepared class table. `save_bundle` writes what the model needs: network.pt2 (the members' averaged
softmax by torch.export, dynamic in the batch and the number of views, checked against the eager
network before it is kept), mean.npy and bundle.json (the preprocessing, the class table, the
default view and both files' sha256). `log_classifier` saves that as an MLflow pyfunc, its code
alongside (alexnet/serving/model_code.py and this package's library), and logs it as a LoggedModel.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet.config.sections import Params
from alexnet.core.layout import MODEL_FILE
from alexnet.data.shards import load_stats
from alexnet.evaluation.members import load_member
from alexnet.serving.classifier import PhotoClassifier, Preprocess, read_classes
from alexnet.serving.pyfunc import BUNDLE_FILE, MEAN_FILE, NETWORK_FILE, _sha256
from alexnet.tracking.registry import SoftmaxAverage, logged_model
from alexnet.tracking.runs import Tracker

MAX_VIEWS = 10  # §4.1's ten patches


def preprocess_of(params: Params) -> Preprocess:
    return Preprocess(stored_size=params.preprocess.stored_size, crop_size=params.model.crop_size,
                      input_scale=params.model.input_scale, resize=params.preprocess.resize,
                      max_pixels=params.data.max_image_pixels)


def member_files(models: Path) -> list[Path]:
    files = sorted(models.glob(f"member-*/{MODEL_FILE}"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not files:
        raise FileNotFoundError(f"{models}: no member-N/{MODEL_FILE} (run the train stage first)")
    return files


def classifier_from_training(params: Params, models: Path, shards: Path, classes_csv: Path) -> PhotoClassifier:
    """The ensemble of models/ behind the preprocessing of `params`, the shards' mean and the class table."""
    members = [load_member(p, params, devices=("cpu",)) for p in member_files(models)]
    network = SoftmaxAverage(members, views=True).eval()
    return PhotoClassifier(network, preprocess_of(params), load_stats(shards)[0], read_classes(classes_csv))


def save_bundle(classifier: PhotoClassifier, folder: Path, views: str = "center") -> dict[str, Any]:
    """network.pt2, mean.npy and bundle.json into `folder`; bundle.json's content."""
    if not isinstance(classifier.network, nn.Module):
        raise ValueError("save_bundle exports an eager network (a classifier built from the training's files)")
    folder.mkdir(parents=True, exist_ok=True)
    p = classifier.preprocess
    example = torch.zeros(2, MAX_VIEWS, 3, p.crop_size, p.crop_size)
    dims = {"images": {0: torch.export.Dim("n", min=1, max=65536), 1: torch.export.Dim("v", min=1, max=MAX_VIEWS)}}
    with torch.no_grad():
        program = torch.export.export(classifier.network.eval(), (example,), dynamic_shapes=dims)
    torch.export.save(program, str(folder / NETWORK_FILE))
    _check_same(folder / NETWORK_FILE, classifier.network, p.crop_size)
    np.save(folder / MEAN_FILE, classifier.mean.numpy())
    meta = {"preprocess": p.as_dict(), "views": views,
            "classes": [{"wnid": c.wnid, "name": c.name} for c in classifier.classes],
            "network_sha256": _sha256(folder / NETWORK_FILE), "mean_sha256": _sha256(folder / MEAN_FILE)}
    (folder / BUNDLE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _check_same(path: Path, network: nn.Module, crop: int) -> None:
    """The saved graph answers other batch sizes and view counts as the eager network does."""
    program = torch.export.load(str(path)).module()
    for shape in ((1, 1), (3, MAX_VIEWS)):
        x = torch.randn(*shape, 3, crop, crop, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            got, want = program(x), network(x)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-6):
            raise ValueError(f"{path}: the exported network differs from the eager one by "
                             f"{(got - want).abs().max().item():.3g} on input {tuple(x.shape)}")


def example_image(size: int = 16) -> str:
    """A tiny grey JPEG as base64: the input example MLflow keeps with the model (a real request's shape)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_pyfunc(bundle: Path, out: Path, mlflow_model: Any = None) -> None:
    """The bundle as an MLflow pyfunc model at `out`: models from code, the library as its code path."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    import alexnet

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "path", required=False)]),
        params=ParamSchema([ParamSpec("top", "long", 5), ParamSpec("views", "string", "")]))
    mlflow.pyfunc.save_model(
        str(out), python_model=str(Path(__file__).with_name("model_code.py")), mlflow_model=mlflow_model,
        artifacts={name.split(".")[0]: str(bundle / name) for name in (BUNDLE_FILE, NETWORK_FILE, MEAN_FILE)},
        code_paths=[str(Path(alexnet.__file__).parent)], signature=signature,
        input_example=pd.DataFrame({"image": [example_image()]}),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pillow", "pydantic>=2.7,<3"])


def log_classifier(tracker: Tracker, run_id: str, classifier: PhotoClassifier, views: str,
                   name: str = "classifier") -> str:
    """The classifier as a logged pyfunc model of run `run_id`; its URI (models:/m-...)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(classifier, Path(tmp) / "bundle", views)

        def save(local: Path, mlflow_model: Any) -> None:
            save_pyfunc(Path(tmp) / "bundle", local, mlflow_model)

        return logged_model(tracker, run_id, name, {"kind": "photo-classifier"}, save)


def val_digest(shards: Path) -> str:
    """Short sha256 of the val split's shard records: the val set a metric was measured on."""
    import hashlib

    from alexnet.core.layout import VAL
    from alexnet.data.shards import read_manifest

    blob = json.dumps(read_manifest(shards)["splits"][VAL], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def describe(classifier: PhotoClassifier, metrics: dict[str, Any], view: str, data: dict[str, str],
             members: int) -> str:
    """The registered version's description: data, classes, the input and output contract, the metric."""
    p, names = classifier.preprocess, [c.name for c in classifier.classes]
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
    return (f"AlexNet ensemble of {members} member(s) trained on {data['dataset']} (data version "
            f"{data['data_version']}, val set {data['val_digest']}); classes: {shown}.\n"
            f"Input: a DataFrame with column `image` (each cell a JPEG/PNG/any Pillow image as base64 text) or "
            f"`path` (files the server can read); params `top` (default 5) and `views` (`center` or `ten`, "
            f"default `{'ten' if view == 'ten_crop' else 'center'}`). The model resizes the shorter side to "
            f"{p.stored_size} px, keeps the central square, crops {p.crop_size} px, subtracts the mean image and "
            f"divides by {p.input_scale}.\nOutput per image: `wnids`, `names`, `probabilities`, most probable "
            f"first.\nChosen on {view}.top1_err = {metrics[view]['top1_err']:.4f} on {metrics.get('images', '?')} "
            "val images.")
