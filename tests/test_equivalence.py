"""TOST equivalence tests over seeds: against one-sided tests written out here and SciPy's."""

import numpy as np
import pytest
from scipy import stats as sps

from prlbench.errors import DataError
from prlbench.stats import tost_ttest, tost_wilcoxon


def tost_t_by_hand(d, margin):
    """The two one-sided t-tests from their formulas."""
    n = len(d)
    se = d.std(ddof=1) / np.sqrt(n)
    t_lo, t_up = (d.mean() + margin) / se, (d.mean() - margin) / se
    return min(t_lo, -t_up), max(sps.t.sf(t_lo, n - 1), sps.t.cdf(t_up, n - 1))


@pytest.mark.parametrize("seed", range(4))
def test_tost_ttest_matches_the_two_one_sided_tests(seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(rng.uniform(-0.004, 0.004), 0.002, 8)
    res = tost_ttest(d, 0.005)
    stat, p = tost_t_by_hand(d, 0.005)
    assert (res.statistic, res.p) == pytest.approx((stat, p), rel=1e-10)
    lo = sps.ttest_1samp(d, -0.005, alternative="greater").pvalue
    up = sps.ttest_1samp(d, 0.005, alternative="less").pvalue
    assert res.p == pytest.approx(max(lo, up), rel=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_tost_wilcoxon_matches_scipy_one_sided_calls(seed):
    rng = np.random.default_rng(10 + seed)
    d = rng.normal(rng.uniform(-0.004, 0.004), 0.002, 7)
    res = tost_wilcoxon(d, 0.005)
    lo = sps.wilcoxon(d + 0.005, alternative="greater")
    up = sps.wilcoxon(d - 0.005, alternative="less")
    assert res.p == pytest.approx(max(lo.pvalue, up.pvalue), rel=1e-12)
    n = len(d)
    assert res.statistic == pytest.approx(min(lo.statistic, n * (n + 1) / 2 - up.statistic))


def test_tost_wilcoxon_is_exact_for_small_n():
    """All n differences well inside the margin: each one-sided exact p is 1 / 2**n."""
    for n in (4, 5, 6, 8):
        d = np.linspace(-0.001, 0.001, n)
        assert tost_wilcoxon(d, 0.01).p == pytest.approx(1 / 2**n, rel=1e-12)
        assert tost_wilcoxon(d, 0.01).statistic == n * (n + 1) / 2


def test_equivalence_declared_inside_the_margin_and_not_when_straddling():
    rng = np.random.default_rng(3)
    inside = rng.normal(0.0, 0.001, 8)
    straddle = rng.normal(0.005, 0.001, 8)  # centred on the margin itself
    outside = rng.normal(0.02, 0.001, 8)
    for test in (tost_ttest, tost_wilcoxon):
        assert test(inside, 0.005).p < 0.01
        assert test(straddle, 0.005).p > 0.1
        assert test(outside, 0.005).p > 0.9
        assert test(-outside, 0.005).p > 0.9
    # A wider margin can only help.
    ps = [tost_ttest(straddle, m).p for m in (0.004, 0.005, 0.006, 0.01)]
    assert ps == sorted(ps, reverse=True)


def test_degenerate_inputs():
    for test in (tost_ttest, tost_wilcoxon):
        assert np.isnan(test([0.001], 0.01).p) and np.isnan(test([], 0.01).p)
    const = tost_ttest([0.001, 0.001, 0.001], 0.01)  # zero variance: undefined, not p = 0
    assert const.statistic == np.inf and np.isnan(const.p)
    assert tost_ttest([0.02, 0.02], 0.01).statistic == -np.inf
    # Differences exactly on the margin are zeros of that side's test: dropped, p 1.
    assert tost_wilcoxon([0.01, 0.01, 0.01], 0.01).p == 1.0


@pytest.mark.parametrize("margin", [0.0, -0.01, np.inf, np.nan, "0.01", None])
def test_bad_margin_raises(margin):
    for test in (tost_ttest, tost_wilcoxon):
        with pytest.raises(DataError, match="margin"):
            test([0.001, 0.002, 0.003], margin)


def test_bad_differences_raise():
    for test in (tost_ttest, tost_wilcoxon):
        with pytest.raises(DataError, match="NaN"):
            test([0.001, np.nan, 0.003], 0.01)
        with pytest.raises(DataError, match="1-D"):
            test([[0.001, 0.002]], 0.01)
