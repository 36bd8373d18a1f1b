"""§5 training: plain functions for one epoch and for a whole run with exact resume.

`fit` takes built objects and small specs: the model, its data (`TrainData`: the loaders, or
anything shaped like them), what it learns with (the train section of the params: epochs, the
update rule, the schedule) and where it runs (`RunSpec`: device, precision, checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet import distributed
from alexnet.batches import rank_dropout_seed
from alexnet.checkpoint import load_resumable, rng_state, save_checkpoint, set_rng_state
from alexnet.config import TrainParams
from alexnet.distributed import SINGLE, Ranks
from alexnet.metrics import mean_softmax, topk_errs, within_topk
from alexnet.model import autocast
from alexnet.optim import PlateauSchedule, make_optimizer, set_lr

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class EpochBatches(Protocol):
    """Training batches by epoch (a `loader.TrainLoader`): len() is the batches in an epoch."""

    def epoch(self, epoch: int) -> Batches: ...

    def __len__(self) -> int: ...


class PassBatches(Protocol):
    """One pass of test batches per iter() (a `loader.EvalLoader`): len() is the batches in a pass."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class TrainData:
    """What `fit` trains on (train.epoch(e) each epoch) and validates on (one pass of val)."""

    train: EpochBatches
    val: PassBatches


@dataclass(frozen=True)
class RunSpec:
    """Where and how a run executes, apart from what it learns (TrainParams says that)."""

    checkpoint: Path  # resumable state, written after every epoch
    device: str
    precision: str  # "fp32" or "bf16", as resolve_precision gave it
    meta: dict[str, Any] = field(default_factory=dict)  # stored in every checkpoint
    name: str = "train"  # for logs and progress bars
    progress: bool = True
    ranks: Ranks = SINGLE  # this process's DDP ranks (alexnet/distributed.py); SINGLE: one process
    seed: int = 0  # the member's seed: several ranks draw dropout from streams of (seed, epoch, batch, rank)
    placement: tuple[str, ...] = ()  # this rank's replica's devices, kept in the checkpoint beside the world size


def resolve_precision(precision: str, device: str) -> str:
    """"auto" -> "bf16" where the device computes bf16 natively, else "fp32".

    On a CPU without AVX-512 BF16/AMX (AVX2 only, say), oneDNN emulates bf16 and a training
    step runs many times slower than fp32 (the README's results log has the figure), so auto
    picks fp32 there.
    """
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def configure_determinism(deterministic: bool, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS refuses deterministic mode unless its workspace is fixed before its first call
        # (https://docs.nvidia.com/cuda/cublas/#results-reproducibility); a user's setting wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only=False: an op with no deterministic kernel fails loudly instead of drifting.
    torch.use_deterministic_algorithms(deterministic)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def _to(batch: tuple[torch.Tensor, torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    non_blocking = torch.device(device).type == "cuda"
    images = images.to(device, non_blocking=non_blocking).contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=non_blocking)


def train_one_epoch(
    model: torch.nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    device: str,
    precision: str,
    total: int | None = None,
    desc: str = "train",
    progress: bool = True,
    ranks: Ranks = SINGLE,
    dropout_seed: Callable[[int], int] | None = None,
) -> dict[str, float]:
    """One pass over `batches`; returns mean loss, top-1 error and images/s.

    The sums of loss * n and error * n stay on the device (float64, the same ops in the same order
    as Python floats would do them) and are read back every `_read_every(device)` batches, for the
    progress bar and the check that the loss is finite: a read per batch makes the host wait for
    every step, so a GPU would idle while the next one is queued.

    With several ranks, `batches` are this rank's slices, `model` its DDP wrapper, and the figures
    returned are over the whole global batches; `dropout_seed(i)` reseeds torch before batch i.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    err_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen, read_every = 0, _read_every(device)
    start = time.perf_counter()
    bar = tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False)
    for i, batch in enumerate(bar, 1):
        if dropout_seed is not None:
            torch.manual_seed(dropout_seed(i - 1))  # batch i - 1 of the epoch (0-based)
        images, labels = _to(batch, device)
        with autocast(device, precision):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = labels.shape[0]
        loss_sum += loss.detach().double() * n
        err_sum += (1.0 - within_topk(logits.detach().float(), labels, 1, check=False).double().mean()) * n
        seen += n
        if i % read_every == 0:
            mean_loss = _finite(loss_sum.item(), desc, i) / seen
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{mean_loss:.3f}", err=f"{err_sum.item() / seen:.3f}", img_s=f"{rate:.0f}")
    if seen == 0:
        raise ValueError(f"{desc}: no training batch (fewer images than train.batch_size?)")
    loss_total, err_total = _finite(loss_sum.item(), desc, i), err_sum.item()
    elapsed = time.perf_counter() - start
    if ranks.parallel:  # each rank's loss is its slice's mean; the epoch's figures are the global batches'
        loss_total, err_total, seen = distributed.all_sum([loss_total, err_total, seen])
    return {"loss": loss_total / seen, "top1_err": err_total / seen, "images_per_s": seen / elapsed}


def _read_every(device: str) -> int:
    # On the CPU a read costs nothing: every batch, as the loss check always did. On a GPU each read
    # drains the queue of steps, so often enough for a live progress bar and an early stop, no more.
    return 1 if torch.device(device).type == "cpu" else 50


def _finite(loss_sum: float, desc: str, batches: int) -> float:
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"{desc}: loss became {loss_sum} by batch {batches}; lower train.lr or check the data")
    return loss_sum


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Batches,
    *,
    device: str,
    precision: str,
    total: int | None = None,
    desc: str = "predict",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N, C) and labels (N,). Batches of (B, V, 3, c, c) views (ten patches)
    are averaged over V after the softmax (§4.1: the network's predictions on the ten patches)."""
    model.eval()
    probs, labels_all = [], []
    for images, labels in tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False):
        views = images.shape[1] if images.dim() == 5 else 1
        flat = images.reshape(-1, *images.shape[-3:])
        flat, labels = _to((flat, labels), device)
        with autocast(device, precision):
            logits = model(flat)
        p = mean_softmax(logits.reshape(labels.shape[0], views, -1), dim=1)  # (N, C)
        probs.append(p.cpu())
        labels_all.append(labels.cpu())
    return torch.cat(probs), torch.cat(labels_all)


def fit(
    model: torch.nn.Module,
    data: TrainData,
    train: TrainParams,
    run: RunSpec,
    *,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train until train.epochs or the schedule's last plateau; checkpoint every epoch.

    If `run.checkpoint` exists, training resumes from it: model, optimizer velocity, schedule,
    RNG states and history are restored, so the run continues exactly where it stopped.
    `run.meta` (resolved params, data version, commit) is stored in every checkpoint.
    `on_epoch` gets each epoch's history row once its checkpoint is written.
    Returns the per-epoch history.
    """
    checkpoint_path, name, device, precision = Path(run.checkpoint), run.name, run.device, run.precision
    epochs, progress, ranks = train.epochs, run.progress, run.ranks
    optimizer = make_optimizer(model.parameters(), train)
    schedule = PlateauSchedule.of(train)
    history: list[dict[str, float]] = []
    start_epoch, finished = 0, False
    world = {"size": ranks.world_size, "placement": list(run.placement or (device,))}
    state = load_resumable(checkpoint_path, name)  # verified; a damaged one is set aside, saying so
    if state is not None:
        check_world(checkpoint_path, state, world)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng_ranks"][ranks.rank] if ranks.parallel else state["rng"])
        history = list(state["history"])
        start_epoch, finished = int(state["epoch"]), bool(state["finished"])
        log.info("%s: resuming from %s after epoch %d%s", name, checkpoint_path, start_epoch,
                 " (already finished)" if finished else "")
    if train.compile:
        model.compile()  # in place: the parameters and state_dict keys stay the module's own
    # Several ranks: DDP averages the ranks' gradients in backward (its constructor also broadcasts
    # rank 0's weights, which every rank already holds). One rank: the model itself, as always.
    net = distributed.wrap(model, train.grad_compression) if ranks.parallel else model
    traffic = distributed.grad_bytes_per_step(model, train.grad_compression) if ranks.parallel else 0
    for epoch in _epochs(start_epoch, epochs, finished):
        set_lr(optimizer, schedule.lr)
        dropout = _dropout_seeds(run.seed, epoch, ranks) if ranks.parallel else None
        stats = train_one_epoch(net, data.train.epoch(epoch), optimizer, device=device, precision=precision,
                                total=len(data.train), desc=f"{name} epoch {epoch + 1}/{epochs}", progress=progress,
                                ranks=ranks, dropout_seed=dropout)
        probs, labels = predict(model, iter(data.val), device=device, precision=precision, total=len(data.val),
                                desc=f"{name} val", progress=progress)
        if ranks.parallel:  # every rank's share of the val images, back in split order
            sizes = data.val.batch_sizes()  # type: ignore[attr-defined]
            probs, labels = (distributed.gather_parts(t, sizes, ranks) for t in (probs, labels))
        val = topk_errs(probs, labels)
        row = {"epoch": epoch + 1, "lr": schedule.lr, "train_loss": stats["loss"],
               "train_top1_err": stats["top1_err"], "val_top1_err": val["top1_err"],
               "val_top5_err": val["top5_err"], "images_per_s": stats["images_per_s"]}
        if ranks.parallel:
            row["grad_bytes_per_step"] = traffic
        history.append(row)
        action = schedule.step(val["top1_err"])
        finished = action == "stop" or epoch + 1 == epochs
        log.info("%s epoch %d: loss %.4f, val top-1 %.4f top-5 %.4f, lr %.2g, %.0f img/s%s%s", name, epoch + 1,
                 row["train_loss"], row["val_top1_err"], row["val_top5_err"], row["lr"], row["images_per_s"],
                 f", {ranks.world_size} ranks all-reduce {traffic / 1e6:.1f} MB/step ({train.grad_compression})"
                 if ranks.parallel else "",
                 {"drop": ", lr drops next epoch", "stop": ", last plateau: stopping"}.get(action, ""))
        # Every rank's RNG state reaches rank 0 (the gather is also where all ranks have finished the
        # epoch); rank 0 alone writes; the barrier holds the others until the file is complete.
        rngs = distributed.gather_objects(rng_state()) if ranks.parallel else None
        if ranks.is_main:
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "rng": rng_state(), "history": history,
                "epoch": epoch + 1, "finished": finished, "meta": run.meta, "world": world,
            }
            if rngs is not None:
                state["rng_ranks"] = rngs
            save_checkpoint(checkpoint_path, state)
            log.info("%s: rank %d of %d wrote checkpoint %s", name, ranks.rank, ranks.world_size, checkpoint_path)
        if ranks.parallel:
            torch.distributed.barrier()
        if on_epoch is not None:
            on_epoch(row)
        if finished:
            break
    return history


def check_world(path: Path, state: dict[str, Any], world: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written by another world size: it would continue another computation."""
    saved = int(state.get("world", {}).get("size", 1))
    if saved != world["size"]:
        raise ValueError(
            f"{path}: written by a DDP job of world size {saved}, this job has world size {world['size']} "
            f"(train.replicas x nodes); resuming with another world size is refused. Run it again with "
            f"{saved} rank(s), or delete the checkpoint to start over")


def _dropout_seeds(seed: int, epoch: int, ranks: Ranks) -> Callable[[int], int]:
    return lambda batch: rank_dropout_seed(seed, epoch, batch, ranks.rank)


def _epochs(start: int, total: int, finished: bool) -> Iterator[int]:
    if not finished:
        yield from range(start, total)
