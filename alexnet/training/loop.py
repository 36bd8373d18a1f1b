"""§5 training: one epoch, and a whole run that resumes exactly.

`fit` takes built objects and small specs: the model, its data (`TrainData`: the loaders, or
anything shaped like them), what it learns with (the train section of the params: epochs, the
update rule, the schedule) and where it runs (`RunSpec`: device, precision, checkpoint).

A checkpoint is written after every epoch, and mid-epoch when `RunSpec.should_stop` says so (the
stages ask it on SIGTERM): with the batches done, the epoch's running sums and every RNG state, so
the rerun continues with batch b of epoch e (batches are pure functions of their key,
alexnet/loading/batches.py) and ends with the weights and history of a run never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet.config.sections import TrainParams
from alexnet.core.cli import Interrupted
from alexnet.loading.batches import rank_dropout_seed
from alexnet.model.network import autocast
from alexnet.training import distributed
from alexnet.training.checkpoint import load_resumable, rng_state, save_checkpoint, set_rng_state
from alexnet.training.distributed import SINGLE, Ranks
from alexnet.training.metrics import topk_errs, within_topk
from alexnet.training.optim import Schedule, make_optimizer, make_schedule, set_lr, warmup_factor
from alexnet.training.predict import predict, to_device

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class EpochBatches(Protocol):
    """Training batches by epoch (a `loader.TrainLoader`): len() is the batches in an epoch."""

    def epoch(self, epoch: int, start_batch: int = 0) -> Batches: ...

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

    checkpoint: Path  # resumable state, written after every epoch and when a stop is requested
    device: str
    precision: str  # "fp32" or "bf16", as resolve_precision gave it
    meta: dict[str, Any] = field(default_factory=dict)  # stored in every checkpoint
    name: str = "train"  # for logs and progress bars
    progress: bool = True
    ranks: Ranks = SINGLE  # this process's DDP ranks (alexnet/training/distributed.py); SINGLE: one process
    seed: int = 0  # the member's seed: several ranks draw dropout from streams of (seed, epoch, batch, rank)
    placement: tuple[str, ...] = ()  # this rank's replica's devices, kept in the checkpoint beside the world size
    # Asked after every step: True ends the run at once, with a checkpoint of the epoch in progress
    # (a signal, say; the caller installs the handler). Every rank must agree: their answers are summed.
    should_stop: Callable[[], bool] | None = None


class TrainingStopped(Interrupted):
    """A stop was requested: the run wrote its checkpoint mid-epoch and ended; a rerun resumes there."""

    def __init__(self, name: str, epoch: int, batch: int):
        super().__init__(f"{name}: stopped at batch {batch} of epoch {epoch}; the checkpoint holds it, and a "
                         "rerun resumes there")
        self.epoch, self.batch = epoch, batch


@dataclass
class EpochSums:
    """An epoch so far: batches done and the running sums of its history row (per rank: its slices).

    A mid-epoch checkpoint keeps them, so a resumed epoch reports exactly what an unbroken one would.
    """

    batches: int = 0
    loss_sum: float = 0.0  # sum of the batches' mean loss x their size
    err_sum: float = 0.0  # the same for the top-1 error
    seen: int = 0  # images
    seconds: float = 0.0  # wall time spent training (not validating)

    def row(self) -> dict[str, float]:
        return {"loss": self.loss_sum / self.seen, "top1_err": self.err_sum / self.seen,
                "images_per_s": self.seen / self.seconds if self.seconds else 0.0}


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
    start: EpochSums | None = None,
    lr_at: Callable[[int], float] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochSums:
    """Train on `batches` (the epoch's batches from `start.batches` on); the epoch's sums.

    The sums of loss * n and error * n stay on the device (float64, the same ops in the same order
    as Python floats would do them), read back every `_read_every(device)` batches for the bar and
    the finite-loss check: a read per batch would make a GPU idle while the host waits.
    `lr_at(i)` sets batch i's learning rate (a warm-up); `dropout_seed(i)` reseeds torch before it
    (several ranks, each on its slices, `model` its DDP wrapper). When `should_stop()` says so after
    a step, the epoch ends early, with fewer batches.
    """
    model.train()
    start = start or EpochSums()
    loss_sum = torch.tensor(start.loss_sum, dtype=torch.float64, device=device)
    err_sum = torch.tensor(start.err_sum, dtype=torch.float64, device=device)
    seen, done, read_every, began = start.seen, start.batches, _read_every(device), time.perf_counter()
    bar = tqdm(batches, total=total, initial=done, desc=desc, unit="batch", leave=False,
               disable=None if progress else True)  # None: on a terminal only, no redraws in a log file
    for batch in bar:
        if dropout_seed is not None:
            torch.manual_seed(dropout_seed(done))  # batch `done` of the epoch (0-based)
        if lr_at is not None:
            set_lr(optimizer, lr_at(done))
        images, labels = to_device(batch, device)
        with autocast(device, precision):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = labels.shape[0]
        loss_sum += loss.detach().double() * n
        err_sum += (1.0 - within_topk(logits.detach().float(), labels, 1, check=False).double().mean()) * n
        seen, done = seen + n, done + 1
        if done % read_every == 0:
            mean_loss = _finite(loss_sum.item(), desc, done) / seen
            rate = (seen - start.seen) / (time.perf_counter() - began)
            bar.set_postfix(loss=f"{mean_loss:.3f}", err=f"{err_sum.item() / seen:.3f}", img_s=f"{rate:.0f}")
        if should_stop is not None and _any_rank(should_stop(), ranks):
            break
    if seen == 0:
        raise ValueError(f"{desc}: no training batch (fewer images than train.batch_size?)")
    return EpochSums(done, _finite(loss_sum.item(), desc, done), err_sum.item(), seen,
                     start.seconds + time.perf_counter() - began)


def _any_rank(flag: bool, ranks: Ranks) -> bool:
    # Every rank must stop after the same step, or the next step's all-reduce would wait forever.
    return distributed.all_sum([float(flag)])[0] > 0 if ranks.parallel else flag


def _read_every(device: str) -> int:
    # On the CPU a read costs nothing: every batch, as the loss check always did. On a GPU each read
    # drains the queue of steps, so often enough for a live progress bar and an early stop, no more.
    return 1 if torch.device(device).type == "cpu" else 50


def _finite(loss_sum: float, desc: str, batches: int) -> float:
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"{desc}: loss became {loss_sum} by batch {batches}; lower train.lr or check the data")
    return loss_sum


@dataclass
class _State:
    """What a run carries from epoch to epoch, and what its checkpoint holds."""

    optimizer: torch.optim.Optimizer
    schedule: Schedule
    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0  # epochs done
    partial: EpochSums = field(default_factory=EpochSums)  # of epoch `epoch`, when stopped inside it
    finished: bool = False


def fit(
    model: torch.nn.Module,
    data: TrainData,
    train: TrainParams,
    run: RunSpec,
    *,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train until train.epochs or the schedule's last plateau; checkpoint every epoch; the history.

    If `run.checkpoint` exists, training resumes from it: model, optimizer velocity, schedule,
    RNG states, history and the epoch in progress are restored, so the run continues exactly where
    it stopped. `run.meta` (resolved params, data version, commit) is stored in every checkpoint.
    `on_epoch` gets each epoch's history row once its checkpoint is written.
    Raises TrainingStopped after the checkpoint when `run.should_stop` ends the run early.
    """
    state = _State(make_optimizer(model.parameters(), train), make_schedule(train))
    _restore(model, state, run)
    if train.compile:
        model.compile()  # in place: the parameters and state_dict keys stay the module's own
    # Several ranks: DDP averages their gradients in backward (and broadcasts rank 0's equal weights).
    net = distributed.wrap(model, train.grad_compression) if run.ranks.parallel else model
    clock = _Clock(train.epochs, state.epoch)
    while not state.finished and state.epoch < train.epochs:
        sums = _train_epoch(net, data, train, run, state)
        if sums.batches < len(data.train):  # a stop was requested
            state.partial = sums
            _save(model, state, run)
            raise TrainingStopped(run.name, state.epoch + 1, sums.batches)
        row = _epoch_row(model, data, train, run, state, sums)
        action = state.schedule.step(row.get("val_top1_err", math.nan))  # a fixed schedule reads no val error
        state.history.append(row)
        state.epoch, state.partial = state.epoch + 1, EpochSums()
        state.finished = action == "stop" or state.epoch == train.epochs
        log.info("%s epoch %d/%d: loss %.4f, %s, lr %.2g, %.0f img/s%s%s, %s", run.name, state.epoch, train.epochs,
                 row["train_loss"], _val_note(row), row["lr"], row["images_per_s"], _traffic_note(row, train),
                 {"drop": ", lr drops next epoch", "stop": ", last plateau: stopping"}.get(action, ""),
                 clock.eta(state.epoch, state.finished))
        _save(model, state, run)
        if on_epoch is not None:
            on_epoch(row)
    return state.history


def _train_epoch(net: torch.nn.Module, data: TrainData, train: TrainParams, run: RunSpec, state: _State) -> EpochSums:
    epoch, steps, start = state.epoch, len(data.train), state.partial
    set_lr(state.optimizer, state.schedule.lr)
    warmup_steps = round(train.warmup_epochs * steps)
    lr_at = None
    if epoch * steps < warmup_steps:  # §5 has none; only a run that asks for one sets a rate per step
        lr_at = lambda i: state.schedule.lr * warmup_factor(epoch * steps + i, warmup_steps)  # noqa: E731
    dropout = _dropout_seeds(run.seed, epoch, run.ranks) if run.ranks.parallel else None
    return train_one_epoch(net, data.train.epoch(epoch, start.batches), state.optimizer, device=run.device,
                           precision=run.precision, total=steps, desc=f"{run.name} epoch {epoch + 1}/{train.epochs}",
                           progress=run.progress, ranks=run.ranks, dropout_seed=dropout, start=start, lr_at=lr_at,
                           should_stop=run.should_stop)


def _epoch_row(model: torch.nn.Module, data: TrainData, train: TrainParams, run: RunSpec, state: _State,
               sums: EpochSums) -> dict[str, float]:
    """The epoch's history row: its training figures over the global batches, and the val error."""
    ranks, stats = run.ranks, sums.row()
    if ranks.parallel:  # each rank's sums are over its slices; the epoch's figures are the global batches'
        loss, err, seen = distributed.all_sum([sums.loss_sum, sums.err_sum, sums.seen])
        stats = {"loss": loss / seen, "top1_err": err / seen, "images_per_s": seen / sums.seconds}
    row = {"epoch": state.epoch + 1, "lr": state.schedule.lr, "train_loss": stats["loss"],
           "train_top1_err": stats["top1_err"], "images_per_s": stats["images_per_s"]}
    if (state.epoch + 1) % train.val_every == 0 or state.epoch + 1 == train.epochs:
        row.update({f"val_{k}": v for k, v in _validate(model, data, run).items()})
    if ranks.parallel:
        row["grad_bytes_per_step"] = distributed.grad_bytes_per_step(model, train.grad_compression)
    return row


def _validate(model: torch.nn.Module, data: TrainData, run: RunSpec) -> dict[str, float]:
    probs, labels = predict(model, iter(data.val), device=run.device, precision=run.precision, total=len(data.val),
                            desc=f"{run.name} val", progress=run.progress)
    if run.ranks.parallel:  # every rank's share of the val images, back in split order
        sizes = data.val.batch_sizes()  # type: ignore[attr-defined]
        probs, labels = (distributed.gather_parts(t, sizes, run.ranks) for t in (probs, labels))
    return topk_errs(probs, labels)


def _val_note(row: dict[str, float]) -> str:
    if "val_top1_err" not in row:
        return f"train top-1 {row['train_top1_err']:.4f}"
    return f"val top-1 {row['val_top1_err']:.4f} top-5 {row['val_top5_err']:.4f}"


def _traffic_note(row: dict[str, float], train: TrainParams) -> str:
    if "grad_bytes_per_step" not in row:
        return ""
    return f", all-reduce {row['grad_bytes_per_step'] / 1e6:.1f} MB/step ({train.grad_compression})"


class _Clock:
    """The time left, from this process's epochs so far (a resumed run's earlier ones not counted)."""

    def __init__(self, epochs: int, first: int):
        self.epochs, self.first, self.began = epochs, first, time.monotonic()

    def eta(self, done: int, finished: bool) -> str:
        if finished:
            return "done"
        per_epoch = (time.monotonic() - self.began) / max(done - self.first, 1)
        left = int(per_epoch * (self.epochs - done))
        return f"ETA {left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"ETA {left // 60}m{left % 60:02d}s"


def _restore(model: torch.nn.Module, state: _State, run: RunSpec) -> None:
    world = {"size": run.ranks.world_size, "placement": list(run.placement or (run.device,))}
    saved = load_resumable(run.checkpoint, run.name)  # verified; a damaged one is set aside, saying so
    if saved is None:
        return
    distributed.check_world(Path(run.checkpoint), saved, world)
    model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    parallel = run.ranks.parallel
    set_rng_state(saved["rng_ranks"][run.ranks.rank] if parallel else saved["rng"])
    state.history, state.epoch, state.finished = list(saved["history"]), int(saved["epoch"]), bool(saved["finished"])
    partial = saved["partial_ranks"][run.ranks.rank] if parallel else saved["partial"]
    state.partial = EpochSums(**partial)
    where = (f"at batch {state.partial.batches} of epoch {state.epoch + 1}" if state.partial.batches
             else f"after epoch {state.epoch}")
    log.info("%s: resuming from %s %s%s", run.name, run.checkpoint, where, " (already finished)" * state.finished)


def _save(model: torch.nn.Module, state: _State, run: RunSpec) -> None:
    # Every rank's RNG state and sums reach rank 0 (the gather is also where all ranks have finished
    # the step); rank 0 alone writes; the barrier holds the others until the file is complete.
    ranks = run.ranks
    gathered = distributed.gather_objects((rng_state(), asdict(state.partial))) if ranks.parallel else None
    if ranks.is_main:
        saved = {
            "model": model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "schedule": state.schedule.state_dict(), "rng": rng_state(), "history": state.history,
            "epoch": state.epoch, "partial": asdict(state.partial), "finished": state.finished, "meta": run.meta,
            "world": {"size": ranks.world_size, "placement": list(run.placement or (run.device,))},
        }
        if gathered is not None:
            saved["rng_ranks"], saved["partial_ranks"] = [g[0] for g in gathered], [g[1] for g in gathered]
        save_checkpoint(run.checkpoint, saved)
        log.info("%s: rank %d of %d wrote checkpoint %s", run.name, ranks.rank, ranks.world_size, run.checkpoint)
    if ranks.parallel:
        torch.distributed.barrier()


def _dropout_seeds(seed: int, epoch: int, ranks: Ranks) -> Callable[[int], int]:
    return lambda batch: rank_dropout_seed(seed, epoch, batch, ranks.rank)
