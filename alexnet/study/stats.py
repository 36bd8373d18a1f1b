"""Intervals over seeds: the mean of a few runs with its 95 % Student-t interval, and paired differences.

A study (alexnet/study/spec.py) trains each variant with the same seeds as the baseline. The seed fixes
the initialisation, the batch order and the augmentation draws, so a variant and the baseline
with one seed share most of their randomness: their difference per seed (`paired`) is the fair
comparison, and its interval is narrower than two separate intervals would suggest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """mean, its two-sided interval [low, high] at `confidence`, and n. n = 1: the interval is unbounded."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}

    def text(self, scale: float = 100.0, digits: int = 2) -> str:
        """'12.34 ± 1.23 (n=3)' in percentage points by default; '± inf' for one run."""
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f} (n={self.n})"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` with the Student-t interval: mean ± t_{(1+c)/2, n-1} * s / sqrt(n)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no values: an interval needs at least one run")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, confidence)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)


def paired(variant: Mapping[int, float], baseline: Mapping[int, float],
           confidence: float = CONFIDENCE) -> Interval:
    """variant - baseline over the seeds both have (each seed's own difference), with its t-interval."""
    seeds = sorted(set(variant) & set(baseline))
    if not seeds:
        raise ValueError(f"no seed in common: variant has {sorted(variant)}, baseline {sorted(baseline)}")
    return t_interval([variant[s] - baseline[s] for s in seeds], confidence)


def verdict(diff: Interval, paper: float) -> str:
    """Whether an effect of the paper's sign (`paper`: its change of error, e.g. +0.014) reproduced.

    "reproduced": the interval excludes zero on the paper's side; "opposite": it excludes zero on
    the other side; "within noise": it includes zero (no effect shown either way; not agreement);
    "one run": n = 1, no interval.
    """
    if diff.n < 2:
        return "one run"
    if not diff.excludes_zero():
        return "within noise"
    return "reproduced" if (diff.mean > 0) == (paper > 0) else "opposite"
