"""The crossed seeds x test-rows model's tests: the two-level t-test and TOST against their
formulas and the paired t-test, their size by simulation (seeds only, and test rows shared
across seeds), the bootstrap test's size in the tail, and the equivalence margins.

`python tests/test_crossed.py [cells]` prints the size figures of docs/statistics.md."""

import numpy as np
import pytest
from scipy import stats as sps

from prlbench.errors import DataError
from prlbench.stats import (crossed, holm, paired_delta, paired_ttest, parse_margins,
                            row_covariance, tost_ttest, two_level_bootstrap, two_level_tost,
                            two_level_ttest, wilcoxon_signed_rank)


# ------------------------------------------------------------------------ the formulas
def test_two_level_ttest_is_the_crossed_t_on_satterthwaites_df():
    rng = np.random.default_rng(1)
    d = rng.normal(0.004, 0.003, 8)
    cov = np.full((8, 8), 2e-6) + np.diag(rng.uniform(1e-6, 3e-6, 8))
    s2, g = d.var(ddof=1), (cov.sum() - np.trace(cov)) / 56
    v = s2 / 8 + g
    nu = v**2 / ((s2 / 8) ** 2 / 7)
    res = two_level_ttest(d, cov)
    assert res.statistic == pytest.approx(d.mean() / np.sqrt(v), rel=1e-12)
    assert res.df == pytest.approx(nu, rel=1e-12)
    assert res.p == pytest.approx(2 * sps.t.sf(abs(res.statistic), nu), rel=1e-12)
    m = crossed(d, cov)
    assert (m.var_seeds, m.shared, m.se) == pytest.approx((s2 / 8, g, np.sqrt(v)), rel=1e-12)


def test_without_row_covariance_it_is_the_paired_t_test():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.7, 0.01, 8), rng.normal(0.7, 0.01, 8)
    mine, ref = two_level_ttest(a - b, np.zeros((8, 8))), paired_ttest(a, b)
    assert mine.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert mine.p == pytest.approx(ref.p, rel=1e-9) and mine.df == ref.df == 7


def test_shared_noise_widens_and_negative_g_is_clipped():
    d = np.array([0.003, 0.005, 0.004, 0.006, 0.002, 0.004, 0.005, 0.003])
    plain = two_level_ttest(d, np.zeros((8, 8)))
    shared = two_level_ttest(d, np.full((8, 8), 1e-6) + np.eye(8) * 1e-6)
    assert shared.p > plain.p and shared.df > plain.df
    # A negative mean off-diagonal (seeds anti-correlated on the rows) counts as 0, as in the CI.
    anti = -np.full((8, 8), 1e-7) + np.eye(8) * 2e-6
    assert two_level_ttest(d, anti).p == pytest.approx(plain.p, rel=1e-12)


def test_edge_cases_follow_the_paired_t_test():
    zeros = np.zeros((3, 3))
    assert np.isnan(two_level_ttest([0.01], [[1e-6]]).p)  # one seed: no test
    zero = two_level_ttest([0.0, 0.0, 0.0], zeros)
    assert (zero.statistic, zero.p) == (0.0, 1.0)
    same = two_level_ttest([0.01, 0.01, 0.01], zeros)
    assert same.statistic == np.inf and np.isnan(same.p)
    # equal deltas but test-set noise: a z test on the rows level (nu = inf)
    rows = two_level_ttest([0.01, 0.01, 0.01], np.full((3, 3), 1e-4))
    assert rows.df == np.inf and rows.p == pytest.approx(2 * sps.norm.sf(1.0), rel=1e-12)


@pytest.mark.parametrize("deltas, cov, match", [
    ([0.1, np.nan], np.zeros((2, 2)), "deltas contain NaN"),
    ([], np.zeros((0, 0)), "non-empty"),
    ([0.1, 0.2], np.zeros((3, 3)), "cov must be 2 x 2"),
    ([0.1, 0.2], [[1.0, 0.5], [0.0, 1.0]], "symmetric"),
    ([0.1, 0.2], [[-1.0, 0.0], [0.0, 1.0]], "negative diagonal"),
])
def test_bad_input_is_named(deltas, cov, match):
    with pytest.raises(DataError, match=f"two_level_ttest: .*{match}|{match}"):
        two_level_ttest(deltas, cov)


def test_two_level_tost():
    rng = np.random.default_rng(3)
    d = rng.normal(0.0, 0.001, 8)
    cov = np.full((8, 8), 0.0005**2) + np.eye(8) * 0.0005**2
    res = two_level_tost(d, cov, 0.005)
    m = crossed(d, cov)
    lower = sps.t.sf((m.mean + 0.005) / m.se, m.nu)
    upper = sps.t.sf((0.005 - m.mean) / m.se, m.nu)
    assert res.p == pytest.approx(max(lower, upper), rel=1e-12) and res.p < 0.001
    assert two_level_tost(d + 0.005, cov, 0.005).p > 0.2  # centred on the margin
    # without row covariance: the paired t TOST
    assert two_level_tost(d, np.zeros((8, 8)), 0.002).p == pytest.approx(
        tost_ttest(d, 0.002).p, rel=1e-9)
    with pytest.raises(DataError, match="margin"):
        two_level_tost(d, cov, 0.0)


# ---------------------------------------------------------------------------- margins
def test_parse_margins():
    assert parse_margins(None) is None
    assert parse_margins(0.002) == {"auc": 0.002}
    assert parse_margins("0.002") == {"auc": 0.002}
    assert parse_margins("auc=0.002, logloss=0.0005") == {"auc": 0.002, "logloss": 0.0005}
    assert parse_margins({"logloss": 0.001}) == {"logloss": 0.001}


@pytest.mark.parametrize("value, match", [
    ("1", "above the bound 0.02"), ("auc=0.5", "above the bound"), ("0", "> 0"),
    ("inf", "> 0"), ("ndcg=0.01", "unknown metric kind 'ndcg'"), ("auc=x", "not a number"),
    ("0.001,0.002", "name each kind"), ("auc=0.001,auc=0.002", "given twice"), ("", "empty"),
])
def test_bad_margins_say_why(value, match):
    with pytest.raises(DataError, match=match):
        parse_margins(value)


# ------------------------------------------------------------------------- size
def normal_cells(rng, n_cells, *, S=8, shared_ratio=0.0, own_ratio=0.3):
    """Null cells at the level of the deltas: seed noise of variance 1, test-set noise shared by
    all seeds of variance G = shared_ratio * s^2 / S, and per-seed test-row noise (own_ratio
    * G * S); cov is the exact row covariance. Yields (deltas, cov)."""
    g = shared_ratio / S
    own = own_ratio * g * S
    cov = np.full((S, S), g) + np.eye(S) * own
    for _ in range(n_cells):
        yield (rng.normal(0, 1, S) + rng.normal(0, np.sqrt(g)) + rng.normal(0, np.sqrt(own), S),
               cov)


def auc_cells(rng, n_cells, *, n=2000, S=8, sigma=0.05):
    """Null cells with real AUCs: a fresh test set per cell (x | y ~ N(y e_0, I), 5 %
    positives), two losses that weight two pure-noise features the same way in mirror image
    (equal population AUC: the true delta is 0), each seed perturbing both. The test set's
    noise is shared by every seed: it dominates, as in a table on ~100 test positives."""
    w_base, w_arm = np.array([1.0, 0.8, 0.0]), np.array([1.0, 0.0, 0.8])
    for _ in range(n_cells):
        y = rng.random(n) < 0.05
        x = rng.normal(size=(n, 3))
        x[:, 0] += y
        parts = [paired_delta("auc", y, x @ (w_arm + sigma * rng.normal(size=3)),
                              x @ (w_base + sigma * rng.normal(size=3))) for _ in range(S)]
        yield np.array([p.delta for p in parts]), row_covariance([p.phi for p in parts])


TESTS = {
    "two-level t": lambda d, c, i: two_level_ttest(d, c).p,
    "paired t": lambda d, c, i: paired_ttest(d, np.zeros_like(d)).p,
    "Wilcoxon": lambda d, c, i: wilcoxon_signed_rank(d, np.zeros_like(d)).p,
    "bootstrap": lambda d, c, i: two_level_bootstrap(d, c, n_boot=2000, seed=i).p,
}


def rejection_rates(cells, tests=TESTS, levels=(0.05,)) -> dict:
    """{test: [share of cells with p <= level for each level]}."""
    ps = {k: [] for k in tests}
    for i, (d, c) in enumerate(cells):
        for k, f in tests.items():
            ps[k].append(f(d, c, i))
    return {k: [float(np.mean(np.asarray(v) <= a)) for a in levels] for k, v in ps.items()}


def test_two_level_t_keeps_its_size_with_seeds_only():
    rates = rejection_rates(normal_cells(np.random.default_rng(4), 1000))
    assert 0.025 <= rates["two-level t"][0] <= 0.075, rates  # binomial se 0.7 %
    assert 0.025 <= rates["bootstrap"][0] <= 0.075, rates


def test_two_level_t_keeps_its_size_when_seeds_share_the_test_set():
    """G = 1.7 s^2 / S (the default table's PWiseR CVR cell): the seed-only tests reject a
    true null 2-3 times too often; the two-level t stays near 5 %."""
    rates = rejection_rates(normal_cells(np.random.default_rng(5), 1000, shared_ratio=1.7))
    assert 0.025 <= rates["two-level t"][0] <= 0.075, rates
    assert 0.025 <= rates["bootstrap"][0] <= 0.075, rates
    assert rates["paired t"][0] > 0.1 and rates["Wilcoxon"][0] > 0.08, rates


def test_two_level_t_keeps_its_size_on_real_aucs_of_a_shared_test_set():
    rates = rejection_rates(auc_cells(np.random.default_rng(6), 300),
                            {k: TESTS[k] for k in ("two-level t", "paired t")})
    assert 0.015 <= rates["two-level t"][0] <= 0.095, rates  # se 1.3 % at 300 cells
    assert rates["paired t"][0] > 0.3, rates  # holds the test set fixed: ~0.6-0.7


def test_bootstrap_test_has_no_floor_in_the_tail():
    """P(p <= 0.05 / 18) under the null, seeds only, must stay near 0.0028: with the old floor
    (1 / (n_boot + 1) wherever every replicate fell on one side) ~1.8 % of the cells sat on it."""
    rates = rejection_rates(normal_cells(np.random.default_rng(7), 2000),
                            {"bootstrap": TESTS["bootstrap"]}, levels=(0.05 / 18,))
    assert rates["bootstrap"][0] <= 0.009, rates  # expected 6 of 2,000; the floor gave ~36


def family_error(cells_fn, test, k=6, n_tables=300, alpha=0.05) -> float:
    """Holm's family-wise error: share of tables of k null cells with any adjusted p < alpha."""
    hits = 0
    for t in range(n_tables):
        ps = [TESTS[test](d, c, i) for i, (d, c) in enumerate(cells_fn(t, k))]
        hits += bool((holm(ps) < alpha).any())
    return hits / n_tables


if __name__ == "__main__":
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    levels = (0.05, 0.05 / 6, 0.05 / 18)
    print(f"null rejection rates at p <= {', '.join(f'{a:.4g}' for a in levels)}; {n} cells "
          "each (8 seeds, bootstrap 2,000 replicates)")
    for name, gen in (("seeds only (normal)", lambda r, k: normal_cells(r, k)),
                      ("shared test set, G = 1.7 s^2/S (normal)",
                       lambda r, k: normal_cells(r, k, shared_ratio=1.7)),
                      ("real AUCs, test set dominates (2,000 rows)",
                       lambda r, k: auc_cells(r, k))):
        t0 = time.perf_counter()
        k = n if "normal" in name else max(1, n // 10)
        rates = rejection_rates(gen(np.random.default_rng(20), k), levels=levels)
        print(f"{name} [{k} cells, {time.perf_counter() - t0:.0f} s]")
        for test, r in rates.items():
            print(f"  {test:12s} " + "  ".join(f"{x:.4f}" for x in r))
    for test in ("two-level t", "paired t", "Wilcoxon", "bootstrap"):
        fw = family_error(lambda t, k: normal_cells(np.random.default_rng(1000 + t), k,
                                                    shared_ratio=1.7), test, n_tables=n // 20)
        print(f"Holm family-wise error over 6 null cells, G = 1.7 s^2/S, {test}: {fw:.3f}")
