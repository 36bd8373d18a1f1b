"""Metrics on hand-made logits: ranks, pessimistic ties, k > C, NaN rows, confusion counts."""

import math

import pytest
import torch

from alexnet.training.metrics import (
    average_probs,
    confusion_matrix,
    mean_softmax,
    per_class_accuracy,
    predictions,
    rank_of_label,
    topk_err,
    topk_errs,
    within_topk,
)

# 4 samples, 4 classes. Label ranks (other classes scoring >= the true one): 0, 1, 3, 2.
SCORES = torch.tensor(
    [
        [9.0, 1.0, 2.0, 3.0],  # label 0: best                 -> rank 0
        [5.0, 4.0, 1.0, 0.0],  # label 1: second               -> rank 1
        [1.0, 2.0, 3.0, 4.0],  # label 0: worst                -> rank 3
        [0.0, 7.8, 8.0, 7.5],  # label 3: third                -> rank 2
    ]
)
LABELS = torch.tensor([0, 1, 0, 3])


def test_ranks_and_topk_on_distinct_scores():
    assert rank_of_label(SCORES, LABELS).tolist() == [0, 1, 3, 2]
    assert topk_err(SCORES, LABELS, 1) == pytest.approx(3 / 4)
    assert topk_err(SCORES, LABELS, 2) == pytest.approx(2 / 4)
    assert topk_err(SCORES, LABELS, 3) == pytest.approx(1 / 4)
    assert topk_err(SCORES, LABELS, 4) == 0.0
    assert topk_errs(SCORES, LABELS, (1, 3)) == {"top1_err": pytest.approx(0.75), "top3_err": pytest.approx(0.25)}


def test_ties_go_against_the_model():
    # A constant-output model gets no credit at any k < C, whatever the label.
    constant = torch.zeros(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    for k in (1, 2, 3):
        assert topk_err(constant, labels, k) == 1.0
    # True class tied with one other at the top: not top-1, but top-2.
    tied = torch.tensor([[3.0, 3.0, 1.0, 0.0]])
    for label in (0, 1):  # regardless of which index comes first
        assert topk_err(tied, torch.tensor([label]), 1) == 1.0
        assert topk_err(tied, torch.tensor([label]), 2) == 0.0


def test_k_larger_than_classes_counts_every_label():
    assert topk_err(SCORES, LABELS, 5) == 0.0
    assert topk_err(torch.zeros(3, 4), torch.tensor([0, 1, 2]), 100) == 0.0


def test_nan_rows_are_errors_at_every_k():
    scores = SCORES.clone()
    scores[0, 2] = float("nan")  # row 0 was a top-1 hit
    assert within_topk(scores, LABELS, 1).tolist() == [False, False, False, False]
    assert within_topk(scores, LABELS, 10).tolist() == [False, True, True, True]


def test_bad_input_is_rejected_with_a_message():
    with pytest.raises(ValueError, match="labels must lie in"):
        topk_err(SCORES, torch.tensor([0, 1, 2, 4]), 1)
    with pytest.raises(ValueError, match=r"scores must be \(N, C\)"):
        topk_err(SCORES[0], LABELS, 1)
    with pytest.raises(ValueError, match="labels must be"):
        topk_err(SCORES, LABELS[:3], 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_err(SCORES, LABELS, 0)
    with pytest.raises(ValueError, match="N=0"):
        topk_err(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 1)


def test_per_class_accuracy_and_confusion_matrix():
    acc = per_class_accuracy(SCORES, LABELS)
    # class 0: samples 0 (hit) and 2 (miss); class 1: sample 1 (miss); class 2: none; class 3: miss.
    assert acc[0].item() == 0.5 and acc[1].item() == 0.0 and math.isnan(acc[2].item()) and acc[3].item() == 0.0
    cm = confusion_matrix(SCORES, LABELS)
    assert cm.dtype == torch.int64 and cm.shape == (4, 4)
    assert predictions(SCORES).tolist() == [0, 0, 3, 2]
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for true, pred in [(0, 0), (1, 0), (0, 3), (3, 2)]:
        expected[true, pred] += 1
    assert torch.equal(cm, expected)
    assert cm.sum().item() == 4


def test_predictions_take_the_first_maximum_and_ignore_nan():
    scores = torch.tensor([[1.0, 5.0, 5.0], [float("nan"), 0.0, 2.0]])
    assert predictions(scores).tolist() == [1, 2]


def test_mean_softmax_averages_probabilities_over_views():
    logits = torch.tensor([[[0.0, 0.0], [10.0, -10.0]]])  # (N=1, V=2, C=2)
    avg = mean_softmax(logits, dim=1)  # (1, 2)
    assert avg.shape == (1, 2)
    assert avg.sum().item() == pytest.approx(1.0)
    assert avg[0, 0].item() == pytest.approx((0.5 + 1.0) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="class dimension"):
        mean_softmax(logits, dim=-1)


def test_average_probs_is_the_mean_of_the_members_and_keeps_rows_summing_to_one():
    a = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    b = torch.tensor([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    avg = average_probs([a, b])
    torch.testing.assert_close(avg, torch.tensor([[0.4, 0.5, 0.1], [0.2, 0.2, 0.6]]))
    torch.testing.assert_close(avg.sum(dim=1), torch.ones(2))
    assert torch.equal(average_probs([a]), a)  # one member: that member
