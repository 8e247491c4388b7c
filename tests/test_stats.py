"""`curate/stats.py`: every test and interval against scipy or a hand computation, and the cases that have no p."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from curate.stats import apply_holm, holm, mean_std, paired_t_test, tost_paired, welch_t_test, wilson_interval


def test_mean_and_sample_sd() -> None:
    assert mean_std([]) == (None, None)
    assert mean_std([4.0]) == (4.0, None)
    m, sd = mean_std([1.0, 2.0, 6.0])
    assert m == 3.0 and sd == pytest.approx(math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))


def test_paired_t_test_is_scipys_and_by_hand() -> None:
    a, b = [150.0, 170.0, 160.0], [100.0, 130.0, 110.0]
    got = paired_t_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert got.kind == "paired" and got.n_a == got.n_b == 3 and got.df == 2
    assert got.t == pytest.approx(ref.statistic) and got.p == pytest.approx(ref.pvalue)
    # by hand: d = 50, 40, 50; mean 46.667, sd 5.7735; t = 46.667 / (5.7735 / sqrt 3) = 14.0
    assert got.mean_diff == pytest.approx(140 / 3) and got.t == pytest.approx(14.0)
    assert got.p == pytest.approx(2 * stats.t.sf(14.0, 2))
    same = paired_t_test([1.0, 2.0], [0.0, 1.0])
    assert same.p is None and same.t is None and same.mean_diff == 1.0 and "no spread" in same.note
    one = paired_t_test([1.0], [2.0])
    assert one.p is None and one.note == "needs at least two seeds" and one.mean_diff == -1.0
    assert paired_t_test([], []).note == "no seed in common"
    with pytest.raises(ValueError):
        paired_t_test([1.0, 2.0], [1.0])


def test_welch_t_test_is_scipys_and_by_hand() -> None:
    a, b = [60.0, 70.0, 60.0, 65.0], [100.0, 120.0, 100.0]
    got = welch_t_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert got.kind == "welch" and (got.n_a, got.n_b) == (4, 3)
    assert got.t == pytest.approx(ref.statistic) and got.p == pytest.approx(ref.pvalue)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    assert got.t == pytest.approx((np.mean(a) - np.mean(b)) / math.sqrt(va + vb))
    assert got.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2))
    assert welch_t_test([1.0], [1.0, 2.0]).p is None
    flat = welch_t_test([1.0, 1.0], [2.0, 2.0])
    assert flat.p is None and "no spread" in flat.note and flat.mean_diff == -1.0


def test_tost_equivalence_of_paired_differences() -> None:
    a, b = [100.0, 104.0, 98.0, 101.0], [100.0, 100.0, 100.0, 100.0]
    d = np.subtract(a, b)
    got = tost_paired(a, b, margin=10.0)
    lower = stats.ttest_1samp(d, -10.0, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 10.0, alternative="less").pvalue
    assert got.p == pytest.approx(max(lower, upper)) and got.equivalent(0.05) and got.margin == 10.0
    # a difference as large as the margin is never equivalent
    wide = tost_paired([110.0, 112.0, 108.0], [100.0, 100.0, 100.0], margin=10.0)
    assert wide.p == pytest.approx(0.5) and not wide.equivalent(0.05)  # mean exactly at the margin
    assert tost_paired([1.0], [1.0], 5.0).p is None
    assert tost_paired([1.0, 2.0], [0.0, 1.0], 5.0).p is None  # no spread: exact, no test


def test_holm_by_hand() -> None:
    # m = 4 present: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert holm([0.03, None, 0.01, 0.5, 0.02]) == [pytest.approx(0.06), None, pytest.approx(0.04), pytest.approx(0.5), pytest.approx(0.06)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]
    tests = [paired_t_test([1.0, 3.0, 2.0], [0.0, 0.5, 0.0]), None, paired_t_test([1.0, 2.0], [0.0, 1.0])]
    apply_holm(tests)
    assert tests[0].p_holm == pytest.approx(tests[0].p) and tests[2].p_holm is None  # one test with a p: m = 1


def test_wilson_interval_is_scipys() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k, n in [(0, 10), (5, 10), (6, 10), (10, 10), (3, 97), (40, 41)]:
        ref = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        lo, hi = wilson_interval(k, n)
        assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert wilson_interval(6, 10) == (pytest.approx(0.312674, abs=1e-6), pytest.approx(0.831820, abs=1e-6))
