"""The study's statistics: known t-intervals, paired differences, Holm, power, the verdicts, the sign test."""

import math

import pytest
from scipy import stats

from alexnet.study.stats import (
    DID_NOT_TRAIN,
    EXCLUDED,
    INCONCLUSIVE,
    SHOWN,
    VERDICTS,
    Interval,
    holm,
    mde,
    paired,
    power,
    sign_test,
    t_interval,
    verdict,
)


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


def test_holm_steps_down_and_stops_at_the_first_claim_it_keeps():
    # p 0.01, 0.04, 0.03 at alpha 0.05: 0.01 <= 0.05/3 rejected; 0.03 > 0.05/2 kept, so 0.04 is kept too
    out = holm([0.01, 0.04, 0.03], 0.05)
    assert [o["rejected"] for o in out] == [True, False, False]
    assert [o["level"] for o in out] == pytest.approx([0.05 / 3, 0.05, 0.05 / 2])
    assert [o["p_holm"] for o in out] == pytest.approx([0.03, 0.06, 0.06])
    # unadjusted, two of the three would pass 0.05: the test can fail on a copy without the correction
    assert sum(p <= 0.05 for p in (0.01, 0.04, 0.03)) == 3 and sum(o["rejected"] for o in out) == 1


def test_power_and_mde_of_the_paired_t_test_match_the_textbook():
    # one-sample (paired) t, effect = 1 SD, n = 10, two-sided 5 %: power 0.8031 (Cohen's tables)
    assert power(1.0, 1.0, 10, 0.05) == pytest.approx(0.8031, abs=5e-4)
    assert mde(1.0, 10, 0.05, 0.8) == pytest.approx(0.9963, abs=2e-3)
    assert power(mde(0.041, 3, 0.05), 0.041, 3, 0.05) == pytest.approx(0.8, abs=1e-6)
    # the arithmetic: SD 4.1 points, 3 seeds, the paper's 1.4 points: power about 7 %
    assert 0.05 < power(0.014, 0.041, 3, 0.05) < 0.09
    assert math.isnan(power(0.01, 0.02, 1, 0.05))


def test_power_and_mde_stay_finite_for_a_pilot_with_a_small_sd():
    # A pilot SD of 0.2 points at 5 seeds: the root search for the MDE passes effects 40 SDs of the
    # mean out, where scipy's nct.cdf gave NaN and stopped the study's pilot step.
    assert power(0.08, 0.002, 5, 0.05 / 6) == pytest.approx(1.0)
    found = mde(0.002, 5, 0.05 / 6, 0.8)
    assert 0 < found < 0.02 and power(found, 0.002, 5, 0.05 / 6) == pytest.approx(0.8, abs=1e-6)


def test_the_four_verdicts_from_their_intervals():
    assert verdict(Interval(0.03, 0.01, 0.05, 12), 0.017, rejected=True) == SHOWN
    # holds 0, stays within 0.8 points < the designed 1.7: the paper's effect is excluded
    assert verdict(Interval(0.001, -0.006, 0.008, 12), 0.017, rejected=False) == EXCLUDED.format("0.8 points")
    assert verdict(Interval(0.01, -0.02, 0.04, 12), 0.017, rejected=False) == INCONCLUSIVE
    # an interval that excludes 0 but that Holm's step-down never reached is not shown
    assert verdict(Interval(0.01, 0.001, 0.019, 12), 0.017, rejected=False) == INCONCLUSIVE
    assert verdict(Interval(0.01, -math.inf, math.inf, 1), 0.017, rejected=False) == INCONCLUSIVE
    assert {SHOWN, INCONCLUSIVE, DID_NOT_TRAIN} <= set(VERDICTS)


def test_sign_test_of_six_of_six_is_one_in_sixty_four():
    assert sign_test(6, 0) == pytest.approx(1 / 64) and sign_test(3, 0) == pytest.approx(0.125)
    assert sign_test(5, 1) == pytest.approx(7 / 64) and sign_test(0, 0) == 1.0
