"""Checks a stage runs first, before any work: facts of this machine and of the prepared dataset.

alexnet/config/params.py validates what a params file can say on its own. Whether model.devices exist
here, or model.num_classes matches the classes prepare found, depends on the machine and on the
data; these checks fail the stage with the key (and the file) named, instead of a traceback
inside training after minutes of work.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from alexnet.config.params import ParamsError
from alexnet.config.sections import Params
from alexnet.core.layout import CLASSES_FILE, DATASET_FILE, TRAIN


def check_runtime(params: Params, source: str = "params.yaml") -> None:
    """Refuse devices this machine does not have, naming model.devices."""
    import torch

    for device in params.model.devices:
        kind, _, index = device.partition(":")
        if kind == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ParamsError(f"{source}: model.devices: {device!r}, but this machine has no CUDA device "
                                  "(torch.cuda.is_available() is False); use cpu")
            if index and int(index) >= count:
                raise ParamsError(f"{source}: model.devices: {device!r}, but this machine has {count} CUDA "
                                  f"device(s): cuda:0..cuda:{count - 1}")
        elif kind == "mps" and not torch.backends.mps.is_available():
            raise ParamsError(f"{source}: model.devices: {device!r}, but MPS is not available on this machine; "
                              "use cpu")


def dataset_classes(prepared_dir: str | Path) -> int:
    """The number of classes prepare found (rows of classes.csv)."""
    path = Path(prepared_dir) / CLASSES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the prepare stage)")
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def check_dataset(params: Params, prepared_dir: str | Path, source: str = "params.yaml") -> None:
    """Refuse params that contradict the prepared dataset, naming the key and the file.

    model.num_classes against classes.csv; train.batch_size against the indexed train images
    in dataset.json (training drops an incomplete batch, so a larger batch would run no step).
    """
    wanted = params.model.num_classes
    if wanted is not None and wanted != (found := dataset_classes(prepared_dir)):
        raise ParamsError(f"{source}: model.num_classes: {wanted}, but {Path(prepared_dir) / CLASSES_FILE} has "
                          f"{found} classes (leave model.num_classes null to take the dataset's count)")
    dataset = Path(prepared_dir) / DATASET_FILE
    try:
        images = int(json.loads(dataset.read_text())["splits"][TRAIN]["indexed"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no readable count: prepare's output is checked where it is read
    if params.train.batch_size > images:
        raise ParamsError(f"{source}: train.batch_size: {params.train.batch_size} is larger than the {images} "
                          f"train images in {dataset}; training drops incomplete batches, so no step would run")


def check_before_work(params: Params, source: str, prepared_dir: str | Path) -> None:
    """What the train and evaluate stages check first: this machine, then the dataset."""
    check_runtime(params, source)
    check_dataset(params, prepared_dir, source)


def check_shards(params: Params, shards_dir: str | Path, source: str = "params.yaml",
                 splits: tuple[str, ...] = ("train", "val")) -> None:
    """The shards, mean.npy and pca.json as their manifest lists them (each file's size and sha256, once per
    process: the loaders then reuse the check), and model.crop_size within the stored images.

    Checked before the flow starts: inside a task a damaged shard would fail after a retry that
    cannot mend it, with a traceback, seconds into the work.
    """
    from alexnet.data.shards import MANIFEST_FILE, ShardSet, load_stats, read_manifest

    stored = int(read_manifest(shards_dir)["stored_size"])
    if params.model.crop_size > stored:
        raise ParamsError(f"{source}: model.crop_size: {params.model.crop_size} is larger than the {stored} px the "
                          f"shards store ({Path(shards_dir) / MANIFEST_FILE}); lower it, or preprocess with "
                          f"preprocess.stored_size >= {params.model.crop_size}")
    load_stats(shards_dir)
    for split in splits:
        ShardSet(shards_dir, split)
