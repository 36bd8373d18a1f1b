"""The registered model as MLflow serves it: an MLflow pyfunc that answers raw image bytes.

Input, a DataFrame (the scoring server's JSON `dataframe_split`/`dataframe_records`/`inputs`): a
column `image`, each cell a JPEG/PNG/any Pillow file as base64 text, or a column `path` of files
the server can read. Params: `top` (5), `views` ("center" or "ten", the headline view by default).
Output, one row per image: `wnids`, `names`, `probabilities`, the top classes most probable first.
An unreadable or too large image fails the whole request with MLflow's INVALID_PARAMETER_VALUE
(HTTP 400) naming the row; the server goes on serving.

The model's own files (alexnet/serving/bundle.py): network.pt2 (the ensemble by torch.export: a
graph and tensors, no pickle), mean.npy, bundle.json (the preprocessing, the class table and the
sha256 of both files, checked before either is read). Its code travels with it (MLflow's
code_paths), so it loads where only MLflow, torch and Pillow are installed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from alexnet.serving.classifier import TOP, ClassEntry, PhotoClassifier, Preprocess

BUNDLE_FILE, NETWORK_FILE, MEAN_FILE = "bundle.json", "network.pt2", "mean.npy"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_bundle(bundle: Path, network: Path, mean: Path) -> PhotoClassifier:
    """The classifier from a bundle's files, each checked against the sha256 bundle.json records."""
    import torch

    meta = json.loads(Path(bundle).read_text())
    for path, key in ((Path(network), "network_sha256"), (Path(mean), "mean_sha256")):
        if _sha256(path) != meta[key]:
            raise ValueError(f"{path}: sha256 does not match {bundle}'s {key}; the model's files are damaged")
    program = torch.export.load(str(network)).module()
    return PhotoClassifier(program, Preprocess(**meta["preprocess"]), np.load(mean, allow_pickle=False),
                           [ClassEntry(c["wnid"], c["name"]) for c in meta["classes"]])


def _bad_input(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def decode_images(frame: pd.DataFrame) -> list[bytes | str]:
    """Each row's image: base64 bytes of column `image`, or the file named in column `path`."""
    if len(frame) == 0:
        raise _bad_input("no images: send a column 'image' (base64 JPEG/PNG) or 'path'")
    images: list[bytes | str] = []
    for i, row in enumerate(frame.to_dict("records")):
        data, path = row.get("image"), row.get("path")
        if isinstance(data, str) and data:
            try:
                images.append(base64.b64decode(data, validate=True))
            except (binascii.Error, ValueError):
                raise _bad_input(f"row {i}: 'image' is not base64 text") from None
        elif isinstance(data, bytes | bytearray) and data:
            images.append(bytes(data))
        elif isinstance(path, str) and path:
            images.append(path)
        else:
            raise _bad_input(f"row {i}: neither 'image' (base64 JPEG/PNG) nor 'path' given")
    return images


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """The pyfunc the registry holds; `views` defaults to the view the version was chosen on."""

    def load_context(self, context: Any) -> None:
        a = context.artifacts
        self.classifier = load_bundle(Path(a["bundle"]), Path(a["network"]), Path(a["mean"]))
        self.default_views = json.loads(Path(a["bundle"]).read_text()).get("views", "center")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        top, views = int(params.get("top") or TOP), str(params.get("views") or self.default_views)
        if views not in ("center", "ten"):
            raise _bad_input(f"params.views: {views!r}; 'center' or 'ten'")
        images = decode_images(model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input))
        patches = self.classifier.patches(images)
        for i, patch in enumerate(patches):
            if isinstance(patch, Exception):  # not an image, truncated, too many pixels, no such file
                raise _bad_input(f"row {i}: not a readable image ({type(patch).__name__}: {patch})")
        found = self.classifier.top(self.classifier.probabilities(np.stack(patches), views), top)
        return pd.DataFrame({"wnids": [[c["wnid"] for c in row] for row in found],
                             "names": [[c["name"] for c in row] for row in found],
                             "probabilities": [[c["probability"] for c in row] for row in found]})
