"""A photo in, the class out: the trained ensemble with the preprocessing it was trained behind.

A `PhotoClassifier` holds what turns any image file into the network's input and its output into
names: the §2 patch (alexnet/data/imageops.py's `load_patch`, the preprocess stage's own code, so a
photo gets the pixels the shards hold), the views of §4.1 (the centre crop or the ten patches,
alexnet/loading/augment.py's `eval_crops` and `finish_eval`, the loader's own code, minus the mean
image's same windows, divided by model.input_scale), the network (the members' softmax averaged, §6)
and the class table (wnid and readable name per label).

It is built from the train stage's files (`from_training`: models/, the shards' mean image, the
prepared classes) for `python -m alexnet.predict`, or from a logged model's artifacts inside its
MLflow pyfunc (alexnet/serving/pyfunc.py): the same object either way, so the command and the model
server give the same answer to the same photo.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from alexnet.data.imageops import load_patch
from alexnet.loading.augment import eval_crops, eval_mean_windows, finish_eval

VIEWS = ("center", "ten")
TOP = 5


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the network's input: the numbers of params.yaml the training used."""

    stored_size: int
    crop_size: int
    input_scale: float
    resize: str = "torchvision"
    max_pixels: int | None = 89_478_485  # the decompression-bomb guard prepare applied

    def as_dict(self) -> dict[str, Any]:
        return dict(stored_size=self.stored_size, crop_size=self.crop_size, input_scale=self.input_scale,
                    resize=self.resize, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class ClassEntry:
    wnid: str
    name: str


class PhotoClassifier:
    """Images (paths or bytes) -> top-k classes with probabilities, through `network` (probabilities out)."""

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], preprocess: Preprocess, mean: np.ndarray,
                 classes: Sequence[ClassEntry]):
        if mean.shape != (preprocess.stored_size, preprocess.stored_size, 3):
            raise ValueError(f"the mean image is {mean.shape}, the patches are {preprocess.stored_size} px square")
        self.network, self.preprocess, self.classes = network, preprocess, list(classes)
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self._windows = {v: eval_mean_windows(self.mean, crop_size=preprocess.crop_size, ten=v == "ten")
                         for v in VIEWS}

    def patch(self, image: str | Path | bytes | IO[bytes]) -> np.ndarray:
        """The §2 patch of one image (uint8, S x S x 3), exactly as the preprocess stage stores it."""
        source = io.BytesIO(image) if isinstance(image, bytes | bytearray) else image
        p = self.preprocess
        return np.asarray(load_patch(source, p.stored_size, p.resize, p.max_pixels))

    def patches(self, images: Sequence[str | Path | bytes]) -> list[np.ndarray | Exception]:
        """Each image's patch, or the error that stopped it (not an image, too many pixels, no such file).

        Decoded side by side in threads: Pillow releases the GIL while it decodes and resamples, so
        a batch request keeps every core busy before the network does.
        """
        def one(image: str | Path | bytes) -> np.ndarray | Exception:
            try:
                return self.patch(image)
            except (OSError, ValueError) as err:
                return err

        if len(images) < 2:
            return [one(i) for i in images]
        with ThreadPoolExecutor(min(len(images), os.cpu_count() or 1)) as pool:
            return list(pool.map(one, images))

    def inputs(self, patches: np.ndarray, views: str = "center") -> torch.Tensor:
        """Patches (N, S, S, 3) -> the network's input: (N, 1, 3, c, c) centre or (N, 10, 3, c, c) ten views."""
        if views not in VIEWS:
            raise ValueError(f"views: {views!r}; one of {', '.join(VIEWS)}")
        ten = views == "ten"
        crops = eval_crops(torch.from_numpy(np.ascontiguousarray(patches)), crop_size=self.preprocess.crop_size,
                           ten=ten)
        x = finish_eval(crops, self._windows[views], self.preprocess.input_scale).contiguous()
        return x if ten else x.unsqueeze(1)  # (N, V, 3, c, c): one view, or ten

    @torch.no_grad()
    def probabilities(self, patches: np.ndarray, views: str = "center") -> torch.Tensor:
        """Class probabilities (N, C): each member's softmax averaged over the views, then over members."""
        return self.network(self.inputs(patches, views)).float()

    def top(self, probs: torch.Tensor, k: int = TOP) -> list[list[dict[str, Any]]]:
        """Per image, the k most probable classes: wnid, name, probability (descending)."""
        k = max(1, min(int(k), probs.shape[1]))
        values, labels = probs.topk(k, dim=1)
        return [[{"wnid": self.classes[i].wnid, "name": self.classes[i].name, "probability": float(p)}
                 for p, i in zip(row_p.tolist(), row_i.tolist())] for row_p, row_i in zip(values, labels)]

    def classify(self, images: Sequence[str | Path | bytes], k: int = TOP, views: str = "center"
                 ) -> list[list[dict[str, Any]]]:
        """Top-k for each image (every image must be readable: see alexnet/predict.py for one at a time)."""
        patches = self.patches(images)
        for image, patch in zip(images, patches):
            if isinstance(patch, Exception):
                raise type(patch)(f"{image}: {patch}") if isinstance(patch, ValueError) else patch
        return self.top(self.probabilities(np.stack(patches), views), k)


def read_classes(path: str | Path) -> list[ClassEntry]:
    """The prepare stage's classes.csv (label, wnid, name), in label order; or a bundle's classes.json."""
    path = Path(path)
    if path.suffix == ".json":
        return [ClassEntry(c["wnid"], c["name"]) for c in json.loads(path.read_text())]
    with open(path, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["label"]))
    return [ClassEntry(r["wnid"], r.get("name") or r["wnid"]) for r in rows]
