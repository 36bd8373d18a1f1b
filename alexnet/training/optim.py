"""§5 learning: the paper's SGD update rule, its plateau learning-rate schedule, a fixed step schedule
and a linear warm-up.

A schedule says the learning rate of each epoch (`lr`) and, after each epoch, whether to keep it,
drop it or stop (`step(val_err)`); the warm-up scales the first steps' rate (`warmup_factor`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol

import torch

from alexnet.config.sections import TrainParams


class PaperSGD(torch.optim.Optimizer):
    """SGD exactly as §5 writes it: v <- m v - wd eps w - eps grad;  w <- w + v.

    torch.optim.SGD keeps v' <- m v' + grad + wd w and steps w <- w - eps v'. With a constant
    learning rate eps the two are the same (v = -eps v'). They differ when eps changes: here the
    velocity keeps the step size it was built with and decays over ~1/(1-m) steps, while PyTorch's
    velocity is rescaled by the new eps at once. `train.update_rule: pytorch` picks torch's rule.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float, weight_decay: float):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        assert closure is None, "PaperSGD takes no closure"
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                velocities.append(state["velocity"])
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            # foreach ops: one fused pass per tensor list, not one Python op per parameter.
            torch._foreach_mul_(velocities, m)
            if wd:
                torch._foreach_add_(velocities, params, alpha=-wd * lr)
            torch._foreach_add_(velocities, grads, alpha=-lr)
            torch._foreach_add_(params, velocities)


def make_optimizer(params: Iterable[torch.Tensor], train: TrainParams) -> torch.optim.Optimizer:
    """The optimizer train.update_rule names, at train.lr, train.momentum and train.weight_decay."""
    hyper = dict(lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.update_rule == "paper":
        return PaperSGD(params, **hyper)
    return torch.optim.SGD(params, **hyper)


Action = Literal["keep", "drop", "stop"]


class Schedule(Protocol):
    lr: float

    def step(self, val_err: float) -> Action: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_schedule(train: TrainParams) -> Schedule:
    """The schedule train.schedule names."""
    if train.schedule == "step":
        return StepSchedule(train.lr, factor=train.lr_factor, milestones=train.lr_steps)
    return PlateauSchedule.of(train)


class PlateauSchedule:
    """§5: divide the learning rate by 10 when validation error stops improving, `drops` times,
    then stop at the next plateau. `patience` epochs without a new best count as a plateau."""

    def __init__(self, lr: float, *, factor: float, patience: int, drops: int):
        self.lr = lr
        self.factor = factor
        self.patience = patience
        self.drops = drops
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops_done = 0

    @classmethod
    def of(cls, train: TrainParams) -> PlateauSchedule:
        """The schedule the train section asks for: from train.lr, by lr_factor, lr_drops times."""
        return cls(train.lr, factor=train.lr_factor, patience=train.lr_patience, drops=train.lr_drops)

    def step(self, val_err: float) -> Action:
        """Record one epoch's validation error; say whether to keep, drop the rate, or stop."""
        if val_err < self.best:
            self.best = val_err
            self.bad_epochs = 0
            return "keep"
        self.bad_epochs += 1
        if self.bad_epochs <= self.patience:
            return "keep"
        self.bad_epochs = 0
        if self.drops_done >= self.drops:
            return "stop"
        self.drops_done += 1
        self.lr *= self.factor
        return "drop"

    def state_dict(self) -> dict[str, Any]:
        return dict(lr=self.lr, best=self.best, bad_epochs=self.bad_epochs, drops_done=self.drops_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.drops_done = int(state["drops_done"])


class StepSchedule:
    """lr times `factor` after each epoch in `milestones` (1-based); never stops early. The val error
    it is given decides nothing, so a study that picks nothing on the val set can use it."""

    def __init__(self, lr: float, *, factor: float, milestones: tuple[int, ...]):
        self.lr, self.factor, self.milestones = lr, factor, tuple(milestones)
        self.epochs_done = 0

    def step(self, val_err: float) -> Action:
        self.epochs_done += 1
        if self.epochs_done in self.milestones:
            self.lr *= self.factor
            return "drop"
        return "keep"

    def state_dict(self) -> dict[str, Any]:
        return dict(lr=self.lr, epochs_done=self.epochs_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.epochs_done = int(state["epochs_done"])


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The share of the scheduled rate at global step `step` (0-based): (step + 1) / warmup_steps, then 1."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
