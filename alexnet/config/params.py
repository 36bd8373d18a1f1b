"""params.yaml loaded once, at the entry point, into the typed sections of alexnet/config/sections.py.

Unknown keys, wrong types and impossible values fail before any work, naming the key; so do
duplicate keys, an empty file and a file that is not text (naming the file). Facts of the machine
and of the prepared dataset are checked by alexnet/pipeline/preflight.py, first thing in the stages.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alexnet.config.file import ParamsError, read_params_file, validation_message
from alexnet.config.sections import Params
from alexnet.core.geometry import pooled_size

__all__ = ["ParamsError", "flatten", "flatten_mapping", "load_params", "parse_params"]


def _check_across_sections(params: Params, source: str) -> None:
    # Checks that span sections live here so the message can name the key, not "<root>".
    model, problems = params.model, []
    if model.crop_size > params.preprocess.stored_size:
        problems.append(f"model.crop_size: {model.crop_size} is larger than preprocess.stored_size="
                        f"{params.preprocess.stored_size}; crops are cut from the stored image")
    smallest = _smallest_crop(model.pooling)
    if model.arch == "alexnet" and model.crop_size < smallest:
        problems.append(f"model.crop_size: {model.crop_size} is too small for the network to pool; "
                        f"with model.pooling={model.pooling} it must be at least {smallest}")
    synthetic = params.data.synthetic.classes
    if params.data.source == "synthetic" and model.num_classes not in (None, synthetic):
        problems.append(f"model.num_classes: {model.num_classes} contradicts data.synthetic.classes={synthetic} "
                        "(leave it null to take the dataset's count)")
    train_images = synthetic * params.data.synthetic.train_per_class
    if params.data.source == "synthetic" and params.train.batch_size > train_images:
        problems.append(f"train.batch_size: {params.train.batch_size} is larger than the {train_images} train "
                        "images of data.synthetic (classes x train_per_class); training drops incomplete batches")
    ensemble = params.ensemble
    if params.train.replicas > 1 and (ensemble.devices is not None or ensemble.runner == "ray"
                                      or ensemble.concurrency > 1):
        problems.append("train.replicas: above 1, the train stage runs under torchrun and trains the members one "
                        "after another; ensemble.devices, ensemble.runner=ray and ensemble.concurrency above 1 do "
                        "not combine with it yet")
    if params.train.batch_size % params.train.replicas:
        problems.append(f"train.batch_size: {params.train.batch_size} is not divisible by train.replicas="
                        f"{params.train.replicas}; every rank takes an equal slice of each batch")
    if ensemble.runner == "ray" and ensemble.devices is not None:
        problems.append("ensemble.devices: not used with ensemble.runner=ray (Ray picks each member's GPUs); "
                        "set it to null")
    if ensemble.runner == "threads" and ensemble.ray_address is not None:
        problems.append("ensemble.ray_address: set, but ensemble.runner is threads; set ensemble.runner: ray")
    if problems:
        raise ParamsError(f"{source}: invalid params\n" + "\n".join(f"  {p}" for p in problems))


@functools.cache
def _smallest_crop(pooling: str) -> int:
    """The smallest crop side the network can pool down to a non-empty pool5 (alexnet.core.geometry decides)."""
    side = 1
    while True:
        try:
            pooled_size(side, pooling)
            return side
        except ValueError:
            side += 1


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(validation_message(err, source, Params)) from None
    _check_across_sections(params, source)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate params.yaml (the one source of settings)."""
    path = Path(path)
    return parse_params(read_params_file(path), str(path))


def flatten_mapping(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: dotted keys for MLflow params and metrics."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_mapping(value, name))
        else:
            out[name] = value
    return out


def flatten(params: Params) -> dict[str, Any]:
    """Params as {"train.lr": 0.01, ...}: for MLflow and metrics files."""
    return flatten_mapping(params.model_dump(mode="json"))
