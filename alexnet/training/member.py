"""One ensemble member, trained: build, train with resume, export its weights, history and summary.

The train side only (the predict side is alexnet/evaluation/members.py): the import closure of this
module is the code behind a member's weights, and its hash is part of the checkpoint's key
(`run_key`), so editing evaluation, tracking or report code never discards a checkpoint.
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

from alexnet.config.params import flatten
from alexnet.config.sections import Params
from alexnet.core.atomic import atomic_write_json, atomic_write_text
from alexnet.core.closure import closure_fingerprint
from alexnet.core.layout import CLASSES_FILE, HISTORY_SUFFIX, MEMBER_SUMMARY_FILE, MODEL_FILE, member_name
from alexnet.core.provenance import fingerprint, git_commit
from alexnet.data.shards import data_version
from alexnet.loading import loader as loaders
from alexnet.model.network import build_model
from alexnet.training.checkpoint import save_weights
from alexnet.training.distributed import Ranks, current_ranks, replica_placement
from alexnet.training.heap import keep_freed_memory
from alexnet.training.loop import RunSpec, TrainData, fit
from alexnet.training.precision import configure_determinism, resolve_precision

log = logging.getLogger(__name__)
# Timings of the last epoch: kept out of the summary file (a DVC output, hashed in dvc.lock), so that
# the same training writes the same bytes; the speed goes to MLflow and the Prefect table.
TIMINGS = ("images_per_s",)

# The per-epoch CSV (a DVC plot, committed): what the run learned. Its speed (images/s) goes to MLflow
# only, so a rerun of the same training rewrites this file byte for byte.
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_top1_err", "val_top1_err", "val_top5_err")


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
            summary=models_dir / name / MEMBER_SUMMARY_FILE,
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
        "code": closure_fingerprint(__name__),  # this module's import closure: the training code
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
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train member `index` (resuming from its checkpoint if one exists); write model, history, summary.

    `on_epoch(row)` runs after each epoch's checkpoint is written: what it raises ends the
    training there, and the next call resumes after that epoch. `should_stop()` is asked after
    every step: True writes a checkpoint of the epoch in progress and raises TrainingStopped.

    Inside a DDP process group (alexnet/training/distributed.py) every rank calls this for the same
    member: each trains its replica on its slices of the batches, rank 0 alone writes the checkpoint
    and the outputs, and `on_epoch` runs on every rank.
    """
    ranks, tr = current_ranks(), params.train
    seed, key = member_seed(tr.seed, index), run_key(params, index, shards_dir)
    paths = MemberPaths.of(index, models_dir, history_dir, checkpoints_dir, key)
    configure_determinism(tr.deterministic, tr.threads, compiled=tr.compile or set(params.model.devices) != {"cpu"})
    if tr.keep_freed_memory:
        keep_freed_memory()
    classes = num_classes_of(prepared_dir, params)
    torch.manual_seed(seed)  # the initialisation (§5) and dropout draw from torch's generator
    placement = replica_placement(params.model.devices, ranks)
    model_params = params.model if ranks.world_size == 1 else params.model.model_copy(update={"devices": placement})
    model = build_model(model_params, classes)
    device = placement[0]
    precision = resolve_precision(tr.precision, device)
    meta = {
        "member": index, "seed": seed, "num_classes": classes, "run_key": key,
        "params": flatten(params), "precision": precision, "data_version": data_version(shards_dir),
        "git_commit": git_commit(), "world_size": ranks.world_size,
    }
    log.info("%s: seed %d, %d classes, devices %s, %s, checkpoint %s%s", member_name(index), seed, classes,
             list(placement), precision, paths.checkpoint,
             f", rank {ranks.rank} of {ranks.world_size}" if ranks.parallel else "")
    run = RunSpec(paths.checkpoint, device, precision, meta, name=member_name(index),
                  progress=progress and ranks.is_main, ranks=ranks, seed=seed, placement=placement,
                  should_stop=should_stop)
    train_data, val_data = _loaders(params, shards_dir, seed, device, ranks)
    with train_data, val_data:
        history = fit(model, TrainData(train_data, val_data), tr, run, on_epoch=on_epoch)
    final = history[-1] if history else None
    summary = {**meta, "epochs": len(history), "final": final}
    if ranks.is_main:  # the ranks hold the same weights; one writer
        export_model(paths.model, model, meta)
        write_history(paths.history, history)
        untimed = final and {k: v for k, v in final.items() if k not in TIMINGS}
        atomic_write_json(paths.summary, {**summary, "final": untimed})
    # The caller gets the speed too (MLflow and the Prefect table show it).
    return {"name": member_name(index), "model": str(paths.model), "history": str(paths.history), **summary}


def _loaders(params: Params, shards_dir: Path, seed: int, device: str,
             ranks: Ranks) -> tuple[loaders.TrainLoader, loaders.EvalLoader]:
    """This rank's training batches and its share of the val images (centre crops) for each epoch's check."""
    tr = params.train
    pin = torch.device(device).type == "cuda"  # page-locked batches: the copy to the GPU runs async
    workers, finish_on = loaders.resolve_workers(tr.workers), loaders.finish_device(tr.finish, device)
    part = (ranks.rank, ranks.world_size)
    train_data = loaders.TrainLoader(
        shards_dir, batch_size=tr.batch_size, crop_size=params.model.crop_size, seed=seed, workers=workers,
        augment=tr.augment, divisor=params.model.input_scale, pin_memory=pin, finish_on=finish_on, part=part,
    )
    val_data = loaders.EvalLoader(
        shards_dir, "val", batch_size=params.evaluate.batch_size, crop_size=params.model.crop_size,
        ten_crop=False, workers=workers, divisor=params.model.input_scale, pin_memory=pin, finish_on=finish_on,
        part=part,
    )
    return train_data, val_data


def export_model(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Weights (CPU tensors, placement-free) plus what is needed to rebuild the network."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_weights(path, {"model": state, "meta": meta})  # with its sha256 beside it: loads verify it


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())
