"""One ensemble member, end to end: build, train with resume, export; predict val probabilities.

These are the library functions that the DVC stages and the Prefect flows both call, so a
`dvc repro` and a Prefect run do exactly the same work.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet import loader as loaders
from alexnet.atomic import atomic_write_json, atomic_write_text
from alexnet.checkpoint import load_checkpoint, save_weights
from alexnet.config import Params, flatten
from alexnet.distributed import current_ranks, replica_placement
from alexnet.evaluate import predictions_file, save_probs
from alexnet.heap import keep_freed_memory
from alexnet.layout import (
    CENTER,
    CLASSES_FILE,
    HISTORY_SUFFIX,
    MODEL_FILE,
    SUMMARY_FILE,
    TEN_CROP,
    TRAIN,
    VAL,
    member_name,
)
from alexnet.metrics import topk_errs
from alexnet.model import build_model
from alexnet.provenance import code_fingerprint, fingerprint, git_commit
from alexnet.shards import data_version
from alexnet.train import RunSpec, TrainData, configure_determinism, fit, predict, resolve_precision

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err", "images_per_s")


@dataclass(frozen=True)
class MemberPaths:
    """Where one member's files live (every path comes from dvc.yaml via the entry point)."""

    model: Path  # final weights + metadata
    history: Path  # per-epoch CSV, a DVC plot
    summary: Path  # JSON: final figures, provenance
    checkpoint: Path  # resumable state, keyed by everything that decides the result

    @staticmethod
    def of(index: int, models_dir: Path, history_dir: Path, checkpoints_dir: Path, key: str) -> MemberPaths:
        name = member_name(index)
        return MemberPaths(
            model=models_dir / name / MODEL_FILE,
            history=history_dir / f"{name}{HISTORY_SUFFIX}",
            summary=models_dir / name / SUMMARY_FILE,
            checkpoint=checkpoints_dir / f"{name}-{key}.pt",
        )


def member_seed(base_seed: int, index: int) -> int:
    """§6: members are trained alike and differ only in their seed."""
    return base_seed + 1000 * index


def num_classes_of(prepared_dir: Path, params: Params) -> int:
    if params.model.num_classes is not None:
        return params.model.num_classes
    with open(prepared_dir / CLASSES_FILE) as f:
        return sum(1 for _ in csv.DictReader(f))


def run_key(params: Params, index: int, shards_dir: Path) -> str:
    """Everything that decides a member's weights: a checkpoint is resumed only under the same key."""
    decisive = {
        "model": params.model.model_dump(mode="json"),
        # Neither the loader's processes, where malloc keeps memory nor where batches are finished
        # (bit-equal either way: tests/test_device_finish.py) changes a result. The world size is left
        # out on purpose: fit keeps it in the checkpoint and refuses to resume under another, where a
        # key of its own would silently start a fresh run; restarts and timeouts decide nothing.
        "train": params.train.model_dump(mode="json", exclude={"workers", "keep_freed_memory", "finish", "replicas",
                                                               "max_restarts", "rendezvous_timeout"}),
        "seed": member_seed(params.train.seed, index),
        "precision": resolve_precision(params.train.precision, params.model.devices[0]),  # what "auto" became
        "data": data_version(shards_dir),
        "code": code_fingerprint(),
    }
    return fingerprint(decisive)


def train_member(
    index: int,
    params: Params,
    *,
    prepared_dir: Path,
    shards_dir: Path,
    models_dir: Path,
    history_dir: Path,
    checkpoints_dir: Path,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train member `index` (resuming from its checkpoint if one exists); write model, history, summary.

    `on_epoch(row)` runs after each epoch's checkpoint is written: what it raises ends the
    training there, and the next call resumes after that epoch.

    Inside a DDP process group (alexnet/distributed.py) every rank calls this for the same member:
    each trains its replica on its slices of the batches, rank 0 alone writes the checkpoint and
    the outputs, and `on_epoch` runs on every rank.
    """
    ranks = current_ranks()
    name = member_name(index)
    seed = member_seed(params.train.seed, index)
    key = run_key(params, index, shards_dir)
    paths = MemberPaths.of(index, models_dir, history_dir, checkpoints_dir, key)
    configure_determinism(params.train.deterministic, params.train.threads)
    if params.train.keep_freed_memory:
        keep_freed_memory()
    classes = num_classes_of(prepared_dir, params)
    torch.manual_seed(seed)  # the initialisation (§5) and dropout draw from torch's generator
    placement = replica_placement(params.model.devices, ranks)
    model_params = params.model if ranks.world_size == 1 else params.model.model_copy(update={"devices": placement})
    model = build_model(model_params, classes)
    device = placement[0]
    precision = resolve_precision(params.train.precision, device)
    meta = {
        "member": index, "seed": seed, "num_classes": classes, "run_key": key,
        "params": flatten(params), "precision": precision, "data_version": data_version(shards_dir),
        "git_commit": git_commit(), "world_size": ranks.world_size,
    }
    tr = params.train
    pin = torch.device(device).type == "cuda"  # page-locked batches: the copy to the GPU runs async
    workers, finish_on = loaders.resolve_workers(tr.workers), loaders.finish_device(tr.finish, device)
    train_data = loaders.TrainLoader(
        shards_dir, batch_size=tr.batch_size, crop_size=params.model.crop_size, seed=seed, workers=workers,
        augment=tr.augment, divisor=params.model.input_scale, pin_memory=pin, finish_on=finish_on,
        part=(ranks.rank, ranks.world_size),
    )
    val_data = loaders.EvalLoader(
        shards_dir, "val", batch_size=params.evaluate.batch_size, crop_size=params.model.crop_size,
        ten_crop=False, workers=workers, divisor=params.model.input_scale, pin_memory=pin, finish_on=finish_on,
        part=(ranks.rank, ranks.world_size),
    )
    log.info("%s: seed %d, %d classes, devices %s, %s, checkpoint %s%s", name, seed, classes, list(placement),
             precision, paths.checkpoint, f", rank {ranks.rank} of {ranks.world_size}" if ranks.parallel else "")
    run = RunSpec(paths.checkpoint, device, precision, meta, name=name, progress=progress and ranks.is_main,
                  ranks=ranks, seed=seed, placement=placement)
    with train_data, val_data:
        history = fit(model, TrainData(train_data, val_data), tr, run, on_epoch=on_epoch)
    summary = {**meta, "epochs": len(history), "final": history[-1] if history else None}
    if ranks.is_main:  # the ranks hold the same weights; one writer
        export_model(paths.model, model, meta)
        write_history(paths.history, history)
        atomic_write_json(paths.summary, summary)
    return {"name": name, "model": str(paths.model), "history": str(paths.history), **summary}


def export_model(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Weights (CPU tensors, placement-free) plus what is needed to rebuild the network."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_weights(path, {"model": state, "meta": meta})  # with its sha256 beside it: loads verify it


def load_member(path: Path, params: Params, devices: tuple[str, ...] | None = None) -> torch.nn.Module:
    """Rebuild a member from its exported file, placed on `devices` (default: params.model.devices)."""
    state = load_checkpoint(path)
    cfg = params.model if devices is None else params.model.model_copy(update={"devices": devices})
    model = build_model(cfg, int(state["meta"]["num_classes"]))
    model.load_state_dict(state["model"])
    return model.eval()


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


class LoadedMember:
    """A member's exported weights, loaded and checksum-verified once, to predict any split with."""

    def __init__(self, model_path: Path, params: Params) -> None:
        if params.train.keep_freed_memory:
            keep_freed_memory()
        self.params = params  # on self alone: scripts/dvc_deps.py follows it into the methods
        self.name = model_path.parent.name
        self.model = load_member(model_path, params)

    def predict_val(self, shards_dir: Path, out_dir: Path, progress: bool = True) -> dict[str, str]:
        """Class probabilities of every val image for the centre crop and (if enabled) the ten patches,
        saved under out_dir; {view: path}."""
        out: dict[str, str] = {}
        views = {CENTER: False, **({TEN_CROP: True} if self.params.evaluate.ten_crop else {})}
        for view, ten in views.items():
            probs, _ = _predict_split(self.model, self.params, shards_dir, VAL, ten, f"{self.name} {view}",
                                      progress)
            path = out_dir / predictions_file(self.name, view)
            save_probs(path, probs)
            out[view] = str(path)
        return out

    def errors(self, shards_dir: Path, split: str = TRAIN, progress: bool = False) -> dict[str, float]:
        """Top-1/top-5 error on a split's images measured as val is: centre crops, eval mode (no dropout,
        no lighting). On the training images it is what the network fits, whatever the variant's
        dropout and augmentation, so train minus val compares overfitting across variants."""
        probs, labels = _predict_split(self.model, self.params, shards_dir, split, False,
                                       f"{self.name} {split}", progress)
        return topk_errs(probs, labels)


def predict_member(
    model_path: Path, params: Params, *, shards_dir: Path, out_dir: Path, progress: bool = True
) -> dict[str, str]:
    """LoadedMember.predict_val of the member at model_path."""
    return LoadedMember(model_path, params).predict_val(shards_dir, out_dir, progress)


def member_errors(model_path: Path, params: Params, *, shards_dir: Path, split: str = TRAIN,
                  progress: bool = False) -> dict[str, float]:
    """LoadedMember.errors of the member at model_path."""
    return LoadedMember(model_path, params).errors(shards_dir, split, progress)


def _predict_split(model: torch.nn.Module, params: Params, shards_dir: Path, split: str, ten: bool, desc: str,
                   progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    device = params.model.devices[0]
    data = loaders.EvalLoader(
        shards_dir, split, batch_size=params.evaluate.batch_size, crop_size=params.model.crop_size,
        ten_crop=ten, workers=loaders.resolve_workers(params.train.workers), divisor=params.model.input_scale,
        pin_memory=torch.device(device).type == "cuda",
        finish_on=loaders.finish_device(params.train.finish, device),
    )
    with data:
        return predict(model, data, device=device, precision=resolve_precision(params.train.precision, device),
                       total=len(data), desc=desc, progress=progress)

