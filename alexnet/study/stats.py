"""A study's statistics: intervals over seeds, paired differences, power, Holm's correction, verdicts.

Each claim compares a variant with the baseline on the same seeds: the paired t-test on the per-seed
differences of the primary metric. The claims of one study are one family: Holm's step-down keeps
the chance of any false "effect shown" below alpha (the claim ranked k-th by p is tested at
alpha / (m - k + 1), and its interval is the one at that level). Power and the minimal detectable
effect come from the noncentral t distribution with the SD of paired differences a pilot measured.

Verdicts, a fixed vocabulary (`VERDICTS`):
- "effect shown": the Holm-level interval excludes 0 (and Holm's step-down reaches the claim);
- "effects larger than X excluded": the interval holds 0 and lies within (-X, X) with X smaller than
  the effect the study was designed to detect: an effect of the paper's size is ruled out;
- "inconclusive": the interval holds 0 and reaches the designed effect: neither shown nor excluded;
- "did not train": a run of the variant or of its baseline failed the training rule; no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import optimize, stats

CONFIDENCE = 0.95
SHOWN, EXCLUDED, INCONCLUSIVE, DID_NOT_TRAIN = "effect shown", "effects larger than {} excluded", "inconclusive", \
    "did not train"
VERDICTS = (SHOWN, EXCLUDED, INCONCLUSIVE, DID_NOT_TRAIN)


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


def interval_of(d: Mapping[str, Any]) -> Interval:
    return Interval(d["mean"], d["low"], d["high"], d["n"], d["confidence"])


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
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd(xs) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)


def sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1); nan for fewer than two values."""
    xs = [float(v) for v in values]
    if len(xs) < 2:
        return math.nan
    mean = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def differences(variant: Mapping[int, float], baseline: Mapping[int, float]) -> list[float]:
    """variant - baseline on every seed both have, in seed order."""
    seeds = sorted(set(variant) & set(baseline))
    if not seeds:
        raise ValueError(f"no seed in common: variant has {sorted(variant)}, baseline {sorted(baseline)}")
    return [variant[s] - baseline[s] for s in seeds]


def paired(variant: Mapping[int, float], baseline: Mapping[int, float],
           confidence: float = CONFIDENCE) -> Interval:
    """variant - baseline over the seeds both have (each seed's own difference), with its t-interval."""
    return t_interval(differences(variant, baseline), confidence)


def paired_p(diffs: Sequence[float]) -> float:
    """Two-sided p of the paired t-test that the mean difference is 0 (1.0 when it cannot be computed)."""
    n, s = len(diffs), sd(diffs)
    if n < 2 or not s > 0:
        return 1.0 if n < 2 or all(d == 0 for d in diffs) else 0.0
    t = (math.fsum(diffs) / n) / (s / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1))


def power(effect: float, sd_diff: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level alpha to find a true mean difference `effect`."""
    if n < 2 or not sd_diff > 0:
        return math.nan
    df, ncp = n - 1, abs(effect) / (sd_diff / math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    # The lower tail P(T < -crit) as P(T > crit) at -ncp: the same by symmetry, but scipy's nct.cdf
    # returns NaN far in that tail (ncp about 40 at df 5), which stopped a study's pilot.
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.sf(crit, df, -ncp))


def mde(sd_diff: float, n: int, alpha: float, target: float = 0.8) -> float:
    """The smallest true difference the paired t-test at level alpha finds with probability `target`."""
    if n < 2 or not sd_diff > 0:
        return math.nan
    hi = sd_diff
    while power(hi, sd_diff, n, alpha) < target:  # double until the root is bracketed
        hi *= 2
    return float(optimize.brentq(lambda d: power(d, sd_diff, n, alpha) - target, 1e-12 * sd_diff, hi))


def holm(p_values: Sequence[float], alpha: float) -> list[dict[str, float | bool]]:
    """Holm's step-down over one family: per p (in the given order) its adjusted p, the level it is
    tested at (alpha / (m - rank + 1)) and whether it is rejected (every smaller p rejected too)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out: list[dict[str, float | bool]] = [{} for _ in range(m)]
    running, still = 0.0, True
    for rank, i in enumerate(order, 1):
        level = alpha / (m - rank + 1)
        running = max(running, min(1.0, (m - rank + 1) * p_values[i]))
        still = still and p_values[i] <= level
        out[i] = {"p": p_values[i], "p_holm": running, "level": level, "rejected": still}
    return out


def verdict(diff: Interval, designed_effect: float, rejected: bool) -> str:
    """The claim's verdict from its Holm-level interval (see the module docstring)."""
    if rejected and diff.excludes_zero():
        return SHOWN
    bound = max(abs(diff.low), abs(diff.high))
    if math.isfinite(bound) and bound < abs(designed_effect):
        return EXCLUDED.format(f"{bound * 100:.1f} points")
    return INCONCLUSIVE


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: P(wins or more of wins + losses fair coin flips) (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n
