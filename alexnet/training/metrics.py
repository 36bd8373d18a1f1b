"""Classification metrics as pure tensor functions (no state, no I/O, no global RNG).

Ranking rule, used by every function here that asks "is the label among the best k?":
the label counts as within the top k iff FEWER than k OTHER classes score >= the true
class's score. Ties therefore go against the model (pessimistic and deterministic, unlike
`torch.topk`, whose order among equal scores is unspecified): a model that outputs the same
score for every class gets no credit at any k < C. k is clamped to the number of classes C,
so k >= C counts every label as within (error 0). A row holding any NaN counts as an error
at every k: a diverged model must not score by accident.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, C), got shape {tuple(scores.shape)}")
    if labels.dim() != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must be (N,) with N={scores.shape[0]}, got shape {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no samples: scores has N=0 rows")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    num_classes = scores.shape[1]
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got min {int(labels.min())}, max {int(labels.max())}")


def rank_of_label(scores: torch.Tensor, labels: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """(N,) int64: how many OTHER classes score >= the true class (0 = strictly best); NaN rows get C.
    check=False skips the input checks, which read the labels back to the host (a GPU sync)."""
    if check:
        _check(scores, labels)
    labels = labels.long()
    true = scores.gather(1, labels[:, None])  # (N, 1)
    rank = (scores >= true).sum(dim=1) - 1  # the true class always ties with itself
    bad = torch.isnan(scores).any(dim=1)
    return torch.where(bad, torch.full_like(rank, scores.shape[1]), rank)


def within_topk(scores: torch.Tensor, labels: torch.Tensor, k: int, *, check: bool = True) -> torch.Tensor:
    """(N,) bool: is the label within the top k under the pessimistic tie rule (k clamped to C)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # rank <= C - 1 on clean rows, so k >= C credits them all; NaN rows have rank C and never pass.
    return rank_of_label(scores, labels, check=check) < min(k, scores.shape[1])


def topk_err(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction in [0, 1] of samples whose label is not within the top k of scores (N, C)."""
    return 1.0 - within_topk(scores, labels, k).double().mean().item()


def topk_errs(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1_err": ..., "top5_err": ...} for the given ks (the paper reports top-1 and top-5)."""
    return {f"top{k}_err": topk_err(scores, labels, k) for k in ks}


def per_class_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(C,) float64 top-1 accuracy per true class (pessimistic ties); NaN for classes with no samples."""
    num_classes = scores.shape[1]
    hit = within_topk(scores, labels, 1).double()
    labels = labels.long()
    count = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels, weights=hit, minlength=num_classes)
    return torch.where(count > 0, correct / count.clamp(min=1), torch.full_like(count, float("nan")))


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """(N,) int64 predicted class: the first index of the maximum score; NaN counts as -inf."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, C), got shape {tuple(scores.shape)}")
    # torch.argmax returns the first maximal index; NaN would otherwise win every argmax.
    return torch.nan_to_num(scores.float(), nan=float("-inf")).argmax(dim=1)


def confusion_matrix(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class (`predictions`: first max).

    Note: the prediction is argmax with ties to the lowest index, so on tied scores the diagonal
    can credit a sample that `topk_err(k=1)` (pessimistic ties) counts as an error.
    """
    _check(scores, labels)
    num_classes = scores.shape[1]
    pred = predictions(scores)
    flat = labels.long() * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Average of softmax probabilities over `dim` (§4.1: the ten patches; §6: ensemble members).

    logits (..., C) in any float dtype; softmax is taken over the last dim in float32, then
    averaged over `dim`, e.g. (N, 10, C) with dim=1 -> (N, C).
    """
    if dim % logits.dim() == logits.dim() - 1:
        raise ValueError("dim must not be the class dimension (the last one)")
    return torch.softmax(logits.float(), dim=-1).mean(dim=dim)


def average_probs(member_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """§6: an ensemble's prediction is the average of its members' softmax outputs (each (N, C))."""
    return torch.stack(list(member_probs)).mean(dim=0)
