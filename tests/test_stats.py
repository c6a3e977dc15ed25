"""prlbench.stats against independent references: scikit-learn, scipy, statsmodels, brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from prlbench.errors import DataError
from prlbench.stats import (auc, benjamini_hochberg, bootstrap_mean_ci, fast_delong, group_auc,
                            holm, min_wilcoxon_p, paired_ttest, relaimpr, wilcoxon_signed_rank)
from prlbench.stats._sort import argsort_scores

from _reference import delong_slow, paired_bootstrap_auc_diff


def tied_data(seed: int, n: int = 400, levels: int = 6):
    """Labels and two correlated integer scores with many ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s1 = rng.integers(0, levels, n) + y  # informative, heavily tied
    s2 = s1 + rng.integers(-2, 3, n)  # correlated with s1
    return y, s1, s2


# ---------------------------------------------------------------- AUC
@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    y, s1, s2 = tied_data(seed)
    assert auc(y, s1) == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    expect = roc_auc_score(y, s2)
    assert auc(y.astype(bool), s2.astype(np.float32)) == pytest.approx(expect, abs=1e-12)


def test_auc_continuous_and_edge_cases():
    rng = np.random.default_rng(7)
    y = rng.random(5000) < 0.1
    s = rng.normal(size=5000) + y
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(y, np.full(5000, 3.0)) == 0.5  # all tied
    assert auc([0, 0, 1, 1], [1, 2, 3, 4]) == 1.0
    assert auc([0, 0, 1, 1], [4, 3, 2, 1]) == 0.0
    assert np.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))  # one class: undefined


def test_auc_rejects_bad_input():
    with pytest.raises(DataError, match="row 1"):
        auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="NaN at row 2"):
        auc([0, 1, 1], [0.1, 0.2, np.nan])
    with pytest.raises(DataError, match="3 rows"):
        auc([0, 1, 1], [0.1, 0.2])


def test_argsort_scores_fast_and_general_paths():
    special = [-np.inf, -1e30, -2.5, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1e-40, 1.0, 3.0, np.inf]
    rng = np.random.default_rng(0)
    f32 = rng.choice(np.array(special, dtype=np.float32), 300).astype(np.float64)
    f64 = f32 + rng.choice([0.0, 1e-12], 300)  # not float32-exact: the np.argsort path
    for s in (f32, f64):
        order = argsort_scores(s)
        np.testing.assert_array_equal(s[order], np.sort(s))
    ties = rng.integers(-3, 3, 300).astype(np.float64)  # the packed-key path is stable
    np.testing.assert_array_equal(argsort_scores(ties), np.argsort(ties, kind="stable"))


def brute_group_auc(y, s, g, weight):
    num = den = 0.0
    for key in np.unique(g):
        sel = g == key
        if 0 < y[sel].sum() < sel.sum():
            w = sel.sum() if weight == "impressions" else 1.0
            num += w * roc_auc_score(y[sel], s[sel])
            den += w
    return num / den


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("weight", ["impressions", "uniform"])
def test_group_auc_matches_per_group_loop(seed, weight):
    y, s1, _ = tied_data(seed, n=1500)
    g = np.random.default_rng(seed + 100).integers(0, 60, len(y)) * 10**9 - 7  # sparse ids
    assert group_auc(y, s1, g, weight=weight) == pytest.approx(brute_group_auc(y, s1, g, weight),
                                                               abs=1e-12)
    # String ids (the np.unique path) give the same answer.
    assert group_auc(y, s1, g.astype(str), weight=weight) == pytest.approx(
        brute_group_auc(y, s1, g, weight), abs=1e-12)


def test_group_auc_huge_id_range_and_no_valid_group():
    y, s1, _ = tied_data(3, n=500)
    g = np.where(np.arange(500) % 2 == 0, np.iinfo(np.int64).min, np.iinfo(np.int64).max)
    assert group_auc(y, s1, g) == pytest.approx(brute_group_auc(y, s1, g, "impressions"), abs=1e-12)
    assert np.isnan(group_auc([0, 0, 1, 1], [1, 2, 3, 4], [0, 0, 1, 1]))
    small = (np.arange(500) % 7 * 40 - 120).astype(np.int8)  # -120..120: wraps if done in int8
    big = (np.arange(500) % 7).astype(np.uint64) + np.uint64(2**64 - 10)
    expect = brute_group_auc(y, s1, small.astype(int), "impressions")
    assert group_auc(y, s1, small) == pytest.approx(expect, abs=1e-12)
    assert group_auc(y, s1, big) == pytest.approx(expect, abs=1e-12)


# ---------------------------------------------------------------- DeLong
@pytest.mark.parametrize("seed", range(5))
def test_fast_delong_matches_textbook_and_sklearn(seed):
    y, s1, s2 = tied_data(seed)
    fast, slow = fast_delong(y, s1, s2), delong_slow(y, s1, s2)
    for field in ("auc1", "auc2", "diff", "var", "z", "p"):
        assert getattr(fast, field) == pytest.approx(getattr(slow, field), abs=1e-10), field
    assert fast.auc1 == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert fast.auc2 == pytest.approx(roc_auc_score(y, s2), abs=1e-12)
    assert fast.p == pytest.approx(2 * sps.norm.sf(abs(fast.diff) / np.sqrt(fast.var)), abs=1e-12)


def test_fast_delong_signed_zeros_and_float64_scores():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    zeros = rng.choice([-0.0, 0.0, 1.0, -np.inf], 200)  # -0.0 == 0.0 must tie
    fine = rng.integers(0, 3, 200) + 1e-12 * rng.integers(0, 2, 200)  # not float32-exact
    fast, slow = fast_delong(y, zeros, fine), delong_slow(y, zeros, fine)
    assert (fast.auc1, fast.auc2, fast.var) == pytest.approx((slow.auc1, slow.auc2, slow.var),
                                                              abs=1e-12)
    same_ranking = np.where(np.isinf(zeros), -5.0, zeros)  # sklearn refuses infinities
    assert fast.auc1 == pytest.approx(roc_auc_score(y, same_ranking), abs=1e-12)


def test_delong_identical_scores_and_degenerate_cases():
    y, s1, _ = tied_data(1)
    same = fast_delong(y, s1, 2 * s1 + 1)  # a monotone transform ranks identically
    assert (same.diff, same.z, same.p) == (0.0, 0.0, 1.0)
    assert np.isnan(fast_delong([1, 1, 1], [1, 2, 3], [3, 2, 1]).p)  # one class
    # Perfect vs constant score: every row differs the same way, so var == 0 and p == 0.
    perfect = fast_delong([0, 0, 1, 1], [1, 2, 3, 4], [5, 5, 5, 5])
    assert (perfect.diff, perfect.var, perfect.z, perfect.p) == (0.5, 0.0, np.inf, 0.0)


@pytest.mark.slow
def test_delong_variance_agrees_with_bootstrap():
    rng = np.random.default_rng(11)
    n = 3000
    y = rng.random(n) < 0.3
    s1 = y + rng.normal(size=n)
    s2 = 0.7 * y + rng.normal(size=n) + 0.5 * s1
    res = fast_delong(y, s1, s2)
    diffs = []
    for _ in range(300):
        i = rng.integers(0, n, n)
        diffs.append(roc_auc_score(y[i], s1[i]) - roc_auc_score(y[i], s2[i]))
    assert res.var == pytest.approx(np.var(diffs), rel=0.3)  # loose: 300 replicates


def normal_scores(rng, n):
    """Binormal scores: AUC(s1) - AUC(s2) = Phi(1 / sqrt 2) - Phi(0.6 / sqrt 2) exactly."""
    y = rng.random(n) < 0.4
    return y, 1.0 * y + rng.normal(size=n), 0.6 * y + rng.normal(size=n)


def test_paired_bootstrap_ci_covers_truth_and_is_reproducible():
    truth = sps.norm.cdf(1.0 / np.sqrt(2)) - sps.norm.cdf(0.6 / np.sqrt(2))
    rng = np.random.default_rng(5)
    hits = 0
    for k in range(40):  # coverage of a 95 % interval over simulated test sets
        res = paired_bootstrap_auc_diff(*normal_scores(rng, 600), n_boot=200, seed=k)
        assert res.lo < res.diff < res.hi
        hits += res.lo < truth < res.hi
    assert hits >= 34  # expected 38; fewer than 34 has probability < 1 % if the CI is right
    y, s1, s2 = normal_scores(rng, 2000)
    res = paired_bootstrap_auc_diff(y, s1, s2, n_boot=300, seed=3)
    assert res.diff == pytest.approx(roc_auc_score(y, s1) - roc_auc_score(y, s2), abs=1e-12)
    assert paired_bootstrap_auc_diff(y, s1, s2, n_boot=300, seed=3) == res
    assert paired_bootstrap_auc_diff(y, s1, s2, n_boot=300, seed=4) != res


def test_paired_bootstrap_replicates_equal_row_resampling():
    """The weighted O(n) replicate equals recomputing the AUC on the resampled rows."""
    y, s1, s2 = tied_data(2, n=300)
    res = paired_bootstrap_auc_diff(y, s1, s2, n_boot=1, seed=9, alpha=0.5)
    rng = np.random.default_rng(9)  # replay the same draws as the implementation
    ip, ineg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rows = np.concatenate([ip[rng.integers(0, len(ip), len(ip))],
                           ineg[rng.integers(0, len(ineg), len(ineg))]])
    expect = roc_auc_score(y[rows], s1[rows]) - roc_auc_score(y[rows], s2[rows])
    assert res.lo == pytest.approx(expect, abs=1e-12) and res.hi == pytest.approx(expect, abs=1e-12)


def test_bootstrap_mean_ci():
    v = np.array([0.002, 0.004, 0.001, 0.003, 0.005, 0.0035])
    mean, lo, hi = bootstrap_mean_ci(v, n_boot=5000, seed=1)
    assert mean == pytest.approx(v.mean())
    assert v.min() <= lo < mean < hi <= v.max()
    assert bootstrap_mean_ci(v, n_boot=5000, seed=1) == (mean, lo, hi)
    assert bootstrap_mean_ci([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(DataError):
        bootstrap_mean_ci([0.1, np.nan])


def test_bootstrap_mean_ci_covers_the_mean_at_eight_seeds():
    """The tables' CI over 8 per-seed deltas: the plain percentile interval covered ~88 %;
    the expanded one must be near 95 % (400 draws: one standard error is ~1.1 %)."""
    rng = np.random.default_rng(7)
    hits = sum(lo <= 0.3 <= hi for _, lo, hi in (
        bootstrap_mean_ci(rng.normal(0.3, 1.0, 8), n_boot=2000, seed=r) for r in range(400)))
    assert 0.91 <= hits / 400 <= 0.985


# ---------------------------------------------------------------- paired tests
def test_paired_tests_match_scipy():
    rng = np.random.default_rng(2)
    a = rng.normal(size=8)
    b = a + rng.normal(0.3, 0.5, size=8)
    t = paired_ttest(a, b)
    ref = sps.ttest_rel(a, b)
    assert (t.statistic, t.p) == pytest.approx((ref.statistic, ref.pvalue), abs=1e-12)
    w = wilcoxon_signed_rank(a, b)
    ref = sps.wilcoxon(a - b)
    assert (w.statistic, w.p) == pytest.approx((ref.statistic, ref.pvalue), abs=1e-12)


def test_paired_tests_degenerate():
    same = paired_ttest([1.0, 2.0], [1.0, 2.0])
    assert (same.statistic, same.p) == (0.0, 1.0)
    assert np.isnan(paired_ttest([1.0], [0.0]).p)
    constant = paired_ttest([2.0, 3.0], [1.0, 2.0])  # identical differences: zero variance
    assert constant.statistic == np.inf and np.isnan(constant.p)  # undefined, not p = 0
    assert wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0]).p == 1.0
    with pytest.raises(DataError):
        paired_ttest([1.0, 2.0], [1.0])


@pytest.mark.parametrize("n", [4, 5, 6, 8])
def test_min_wilcoxon_p_is_the_exact_floor(n):
    d = np.arange(1, n + 1) * 0.001  # every difference positive: the most extreme outcome
    assert wilcoxon_signed_rank(d, np.zeros(n)).p == pytest.approx(min_wilcoxon_p(n), abs=1e-12)
    assert (min_wilcoxon_p(n) < 0.05) == (n >= 6)


# ---------------------------------------------------------------- multiple testing
def brute_holm(p):
    k = len(p)
    order = np.argsort(p)
    out = np.empty(k)
    for i, idx in enumerate(order):
        out[idx] = min(1.0, max((k - j) * p[order[j]] for j in range(i + 1)))
    return out


def brute_bh(p):
    k = len(p)
    order = np.argsort(p)
    out = np.empty(k)
    for i, idx in enumerate(order):
        out[idx] = min(1.0, min(k * p[order[j]] / (j + 1) for j in range(i, k)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_holm_bh_match_brute_force(seed):
    p = np.random.default_rng(seed).random(12) ** 3
    p[3] = p[5]  # a tie
    np.testing.assert_allclose(holm(p), brute_holm(p), atol=1e-15)
    np.testing.assert_allclose(benjamini_hochberg(p), brute_bh(p), atol=1e-15)


def test_holm_bh_match_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    p = np.random.default_rng(9).random(20) ** 2
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], atol=1e-14)
    np.testing.assert_allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1],
                               atol=1e-14)


def test_holm_bh_nan_passthrough():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    for fn, brute in ((holm, brute_holm), (benjamini_hochberg, brute_bh)):
        out = fn(p)
        assert np.isnan(out[1])
        np.testing.assert_allclose(out[[0, 2, 3]], brute(p[[0, 2, 3]]), atol=1e-15)
    assert np.isnan(p[1]) and p[0] == 0.01  # input untouched
    with pytest.raises(DataError):
        holm([0.5, 1.5])


# ---------------------------------------------------------------- RelaImpr
def test_relaimpr():
    assert relaimpr(0.7, 0.7) == 0.0
    assert relaimpr(0.75, 0.7) == pytest.approx(25.0)
    assert relaimpr(0.65, 0.7) == pytest.approx(-25.0)
    assert np.isnan(relaimpr(0.7, 0.5))
    assert np.isnan(relaimpr(0.6, 0.45))  # a base below random: the ratio's sign is meaningless
    assert np.isnan(relaimpr(float("nan"), 0.7))


def test_paired_ttest_zero_and_constant_share_one_tolerance():
    assert paired_ttest([1e-13, 0.0], [0.0, 0.0]) == paired_ttest([1e-16, 0.0], [0.0, 0.0])
    assert paired_ttest([1e-16, 0.0], [0.0, 0.0]).p == 1.0
