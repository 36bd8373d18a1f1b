"""Interval maths for the study: known t-intervals, paired differences, verdicts."""

import math

import pytest
from scipy import stats

from alexnet.study.stats import Interval, paired, t_interval, verdict


def test_t_interval_of_a_known_sample():
    # 1..5: mean 3, s = sqrt(2.5), t_{0.975, 4} = 2.7764451; half width 2.7764451 * sqrt(2.5) / sqrt(5)
    iv = t_interval([1, 2, 3, 4, 5])
    assert iv.mean == 3 and iv.n == 5
    assert iv.half_width == pytest.approx(2.7764451 * math.sqrt(0.5), abs=1e-6)
    low, high = stats.t.interval(0.95, 4, loc=3, scale=stats.sem([1, 2, 3, 4, 5]))
    assert (iv.low, iv.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_two_runs_use_the_wide_t_quantile():
    iv = t_interval([0.30, 0.32])  # t_{0.975, 1} = 12.706: two seeds say little
    assert iv.half_width == pytest.approx(12.7062047 * 0.01, rel=1e-6)


def test_one_run_has_no_interval_and_empty_input_fails():
    assert t_interval([0.3]).half_width == math.inf
    with pytest.raises(ValueError, match="at least one run"):
        t_interval([])


def test_paired_difference_uses_each_seeds_own_difference():
    base = {0: 0.40, 1: 0.50, 2: 0.60}
    var = {0: 0.41, 1: 0.51, 2: 0.62, 7: 0.9}  # seed 7 has no partner: left out
    iv = paired(var, base)
    assert iv.n == 3 and iv.mean == pytest.approx(0.04 / 3)
    # unpaired, the seed-to-seed spread (0.1) would swamp the 1-2 point effect
    assert iv.half_width < t_interval(list(base.values())).half_width / 10
    with pytest.raises(ValueError, match="no seed in common"):
        paired({3: 0.1}, base)


def test_verdicts_never_round_noise_into_agreement():
    assert verdict(Interval(0.01, 0.002, 0.018, 3), paper=0.014) == "reproduced"
    assert verdict(Interval(0.01, -0.002, 0.022, 3), paper=0.014) == "within noise"
    assert verdict(Interval(-0.01, -0.018, -0.002, 3), paper=0.014) == "opposite"
    assert verdict(Interval(0.01, -math.inf, math.inf, 1), paper=0.014) == "one run"
