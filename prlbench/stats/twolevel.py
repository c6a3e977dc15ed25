"""Two-level bootstrap of a paired difference over seeds AND test rows, by influence functions.

One table cell has S seeds; on seed s the arm and the baseline were trained with seed s and
scored on the same n test rows, giving Delta_s = metric(arm_s) - metric(base_s). A bootstrap
over the seeds alone ignores that the test set is a sample too: with ~150 test positives the
test-row noise of an AUC is as large as the seed noise. Here both levels count.

Resampling rows literally costs O(n) per seed per replicate. Instead, to first order, row
weights w (bootstrap multiplicities, sum n) move each Delta_s by sum_i (w_i - 1) phi_i^s, where
phi^s is the influence of row i on Delta_s (arm minus baseline; ``auc_influence``,
``mean_influence``, ``paired_delta``). Under multinomial weights these shifts are jointly
~ N(0, C), C[s, t] = sum_i phi_i^s phi_i^t (``row_covariance``; their exact covariance, as each
phi^s sums to 0). So the per-row work is one sort per score vector and one S x S product;
``two_level_bootstrap`` then draws replicates in O(n_boot * S).

Typical use for one cell (AUC; ``rows`` = clicked rows for CVR AUC)::

    parts = [paired_delta("auc", y, arm[s], base[s], rows) for s in range(S)]
    res = two_level_bootstrap([p.delta for p in parts], row_covariance([p.phi for p in parts]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

from prlbench.errors import DataError
from prlbench.stats import _checks
from prlbench.stats.bootstrap import _check_boot
from prlbench.stats.crossed import Crossed, check_inputs, crossed, t_sf
from prlbench.stats.delong import _placements

METHODS = ("crossed", "pigeonhole")
# A p value is read off the replicates where at least this many lie beyond its bound; further
# out, from the t model (see two_level_bootstrap).
RESOLVED = 25


# ------------------------------------------------------------------------ influence functions
def auc_influence(y, score, rows=None) -> tuple[float, np.ndarray]:
    """ROC AUC of ``score`` (ties count 1/2, as ``prlbench.stats.auc``) and each row's
    influence phi [n] float64 on it.

    With m positives and k negatives among the metric's rows: a positive i gets
    phi_i = (V10_i - AUC) / m, V10_i = (negatives scored below s_i + 1/2 tied) / k; a negative j
    gets phi_j = (V01_j - AUC) / k, V01_j = (positives scored above s_j + 1/2 tied) / m. This is
    the derivative of the row-weighted AUC at weights 1 (the normalisation by the weighted class
    totals included), so AUC(w) ~= AUC + sum_i (w_i - 1) phi_i; phi sums to 0 within each class;
    sum phi^2 is DeLong's variance with each class's variance divided by m (k) instead of
    m - 1 (k - 1).

    ``rows``: optional boolean mask [n] of the rows the metric is over (e.g. clicked rows for
    CVR AUC); the other rows get phi 0. One class only (among ``rows``) -> (nan, all-nan phi).
    Cost: one sort; ~1 s and ~0.5 GB for 10 M rows.
    """
    pos = _checks.labels(y)
    s = _checks.scores(score, len(pos))
    mask = _rows_mask(rows, len(pos))
    if mask is not None:
        pos, s = pos[mask], s[mask]
    m = int(np.count_nonzero(pos))
    k = len(pos) - m
    if m == 0 or k == 0:
        n = len(mask) if mask is not None else len(pos)
        return float("nan"), np.full(n, np.nan)
    v = _placements(pos, s)  # V10 on positives, V01 on negatives, input order
    a = float(v[pos].sum() / m)
    v -= a
    v /= np.where(pos, float(m), float(k))
    return a, _scatter(v, mask)


def mean_influence(values, rows=None) -> tuple[float, np.ndarray]:
    """Mean of per-row ``values`` (e.g. each row's log loss) over the metric's rows and each
    row's influence phi_i = (values_i - mean) / n_rows on it (0 outside ``rows``).

    ``rows``: optional boolean mask [n]. No rows -> (nan, all-nan phi). Non-finite values raise
    DataError (a log loss is finite once its probabilities are clipped).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise DataError(f"values must be a 1-D array (one value per row); got shape {v.shape}")
    mask = _rows_mask(rows, len(v))
    sub = v[mask] if mask is not None else v.copy()
    bad = ~np.isfinite(sub)
    if bad.any():
        raise DataError(f"values are not finite ({sub[bad][0]!r}): clip the probabilities of a "
                        "log loss, or drop the failed rows")
    if len(sub) == 0:
        return float("nan"), np.full(len(v), np.nan)
    mean = float(sub.mean())
    sub -= mean
    sub /= len(sub)
    return mean, _scatter(sub, mask)


class SeedDelta(NamedTuple):
    """One seed's paired difference metric(arm) - metric(base) and its row influence [n]."""

    delta: float
    phi: np.ndarray


def paired_delta(kind: str, y, arm, base, rows=None, *, dtype=np.float64) -> SeedDelta:
    """Delta = metric(arm) - metric(base) on one seed's test rows, and phi = its row influence
    (influence on the arm minus influence on the baseline).

    ``kind="auc"``: ``y`` the 0/1 labels, ``arm`` and ``base`` the two scores (``auc_influence``).
    ``kind="mean"``: ``y`` must be None, ``arm`` and ``base`` the per-row values whose mean is the
    metric, e.g. each row's log loss (``mean_influence``). ``rows`` as in those functions.
    ``dtype=np.float32`` halves the memory of phi (see ``row_covariance`` for its precision).
    """
    if kind == "auc":
        if y is None:
            raise DataError("paired_delta: kind 'auc' needs the labels y")
        a1, phi = auc_influence(y, arm, rows)
        a0, phi0 = auc_influence(y, base, rows)
    elif kind == "mean":
        if y is not None:
            raise DataError("paired_delta: kind 'mean' takes per-row values in arm and base "
                            "(e.g. row log losses) and no labels: pass y=None")
        a1, phi = mean_influence(arm, rows)
        a0, phi0 = mean_influence(base, rows)
        if len(phi) != len(phi0):
            raise DataError(f"paired_delta: arm and base must have one value per row each; "
                            f"got {len(phi)} and {len(phi0)}")
    else:
        raise DataError(f"paired_delta: kind must be 'auc' or 'mean', not {kind!r}")
    phi -= phi0
    return SeedDelta(a1 - a0, phi.astype(dtype, copy=False))


def row_covariance(phis: Sequence[np.ndarray] | np.ndarray, *, chunk: int = 1 << 18) -> np.ndarray:
    """C [S, S] float64, C[s, t] = sum_i phi_i^s phi_i^t: the covariance of the row-bootstrap
    shifts of the S seeds' deltas (they share the test set, so C is not diagonal).

    ``phis``: S arrays of n rows each (a list, or one [S, n] array); float32 or float64. The sum
    runs over blocks of ``chunk`` rows converted to float64, so the extra memory is
    S * chunk * 8 bytes (16 MB at S = 8) and the accumulation is float64 whatever the input.
    float32 phis change C by a relative ~1e-7 (one float32 rounding of each phi), far below the
    Monte Carlo error of any bootstrap. NaN in a phi (a one-class seed) raises DataError.
    """
    if isinstance(phis, np.ndarray) and phis.ndim == 2:
        phis = list(phis)
    phis = [np.asarray(p) for p in phis]
    if not phis:
        raise DataError("row_covariance: phis is empty; pass one influence array per seed")
    n = phis[0].shape
    for s, p in enumerate(phis):
        if p.ndim != 1 or p.shape != n or not np.issubdtype(p.dtype, np.floating):
            raise DataError(f"row_covariance: phis[{s}] must be a 1-D float array of {n[0]} "
                            f"rows like phis[0]; got {p.dtype} of shape {p.shape}")
    S, n = len(phis), n[0]
    c = np.zeros((S, S))
    for i in range(0, n, chunk):
        x = np.stack([p[i:i + chunk] for p in phis]).astype(np.float64, copy=False)  # [S, chunk]
        c += x @ x.T
    if not np.isfinite(c).all():
        bad = [s for s in range(S) if not np.isfinite(c[s, s])]
        raise DataError(f"row_covariance: the phi of seed(s) {bad} is not finite (a metric "
                        "over one class only has no AUC); drop those seeds")
    return (c + c.T) / 2  # exactly symmetric


# ------------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class TwoLevelResult:
    """Mean paired difference over seeds, its two-level bootstrap CI and p values.

    mean: plain mean of the per-seed deltas. lo, hi: the CI. p: two-sided, the smallest alpha
    at which the CI excludes 0, with the t model's tail where the replicates cannot resolve it.
    p_beats: probability that a run of the arm beats the baseline's run of its seed on a new
    test set (in [0, 1]; 0.5 = a coin flip). p_equivalent: TOST equivalence p value
    for |Delta| < margin (nan without a margin). row_share: estimated share of the variance of
    the mean delta that comes from the test rows. method: "crossed" or "pigeonhole".
    """

    mean: float
    lo: float
    hi: float
    p: float
    p_beats: float
    p_equivalent: float
    n_seeds: int
    n_boot: int
    row_share: float
    method: str


def two_level_bootstrap(deltas, cov, *, higher_is_better: bool = True, n_boot: int = 10000,
                        seed: int = 0, alpha: float = 0.05, margin: float | None = None,
                        method: str = "crossed") -> TwoLevelResult:
    """CI and p values of the mean paired delta over S seeds, resampling seeds and test rows.

    ``deltas`` [S]: each seed's Delta_s; ``cov`` [S, S]: ``row_covariance`` of their phis.
    ``higher_is_better``: the metric's direction (True for AUC, False for log loss); it only
    sets ``p_beats``. ``margin``: if given (finite, > 0), ``p_equivalent`` is the TOST p value
    of -margin < Delta < margin: the max of the one-sided p values of Delta <= -margin and
    Delta >= margin, read off the same replicates, so that p_equivalent < alpha exactly when
    the (1 - 2 alpha) interval lies inside (-margin, margin).

    Replicate b draws S seeds with replacement (idx) and a rows-level shift:

    - ``method="pigeonhole"``: the literal two-level bootstrap. One row resample shared by all
      seeds and both arms, linearised: e_b ~ N(0, C) (eigen-decomposition, negative eigenvalues
      clipped to 0) and Delta*_b = mean_k (Delta_idx[k] + e_b[idx[k]]); interval: the expanded
      percentile interval of ``bootstrap_mean_ci`` (``expanded_alpha(S, alpha)``). It is
      conservative: the seed-specific part of the test-row noise is already in the spread of
      the Delta_s and is drawn again in e (in all ~3 times in the variance; Owen 2007, "the
      pigeonhole bootstrap"), and the rows level, known from ~n rows, is widened by the
      seeds' small-sample expansion too.
    - ``method="crossed"`` (default): the variance of the mean of a seeds x rows crossed design,
      s^2 / S + G, where s^2 is the sample variance of the deltas (it already holds each seed's
      own test-row noise) and G = the mean off-diagonal C[s, t], s != t: the test-row noise all
      seeds share. Delta*_b = mean_k Delta_idx[k] + eps_b, eps_b ~ N(0, max(G, 0) (S - 1) / S);
      interval: the expanded percentile interval with Student's t on Satterthwaite's degrees of
      freedom nu = (s^2/S + G)^2 / ((s^2/S)^2 / (S - 1)), i.e. the percentile level whose normal
      quantile is sqrt(S / (S - 1)) t_nu. With G = 0 this is ``bootstrap_mean_ci``'s interval
      (same draws, same endpoints); when the rows dominate it tends to the normal interval
      mean +- z sqrt(s^2 / S + G). The coverage simulations support this one (~95 %, where
      the pigeonhole covers 99-100 % and the seeds-only bootstrap can fall far below 95 %):
      see docs/statistics.md.

    S = 1: no seed spread; the interval is the rows-level one, Delta_1 +- the normal quantile
    times sqrt(C[0, 0]) (by percentiles of Delta_1 + N(0, C[0, 0]); both methods), i.e. a
    test-set-only interval that says nothing about seeds.

    ``p_beats`` is analytic, not from the replicates: the probability that a run of the arm
    beats the baseline's run of the same seed on a new test set, Phi(mean / sqrt(s^2 + G))
    under the crossed normal model (sign flipped when lower is better; with one seed,
    Phi(Delta_1 / sqrt(C[0, 0]))): an estimate of Bouthillier et al.'s (MLSys 2021) P(A > B)
    over seeds and test sets; with no spread at either level it is 1, 1/2 or 0 by the sign
    of the mean. ``row_share`` = (1' C 1 / S^2) / (s^2 / S + max(G, 0)), clipped to [0, 1] (1
    at S = 1): the test-set share (shared and seed-specific) of the estimated variance of the
    mean. p values are read off the replicates where at least ``RESOLVED`` (25) of them lie
    beyond the bound; further out (where all replicates on one side would otherwise give
    1 / n_boot whatever the effect) from the t model: the crossed t of ``two_level_ttest``
    (pigeonhole: the replicates' sd, expanded, on S - 1 degrees of freedom). So p < alpha
    exactly when the interval at alpha excludes 0 wherever that interval's tail holds 25
    replicates (alpha = 0.05 at 8 seeds: ~57 of 10,000). With no spread at either level
    (equal deltas, C = 0) the interval is the point itself, p is 0 or 1 and row_share nan.

    NaN or infinite deltas / cov raise DataError (drop the failed seeds first), as do a cov of
    the wrong shape, not symmetric, or with a negative diagonal.
    """
    _check_boot(n_boot, alpha)
    if method not in METHODS:
        raise DataError(f"two_level_bootstrap: method must be one of {METHODS}, not {method!r}")
    d, c = check_inputs(deltas, cov, "two_level_bootstrap")
    if margin is not None:
        _checks.margin(margin, "two_level_bootstrap")
    model = crossed(d, c)
    S, n_boot = len(d), int(n_boot)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, S, (n_boot, S))
    reps = d[idx].mean(axis=1)  # [B] the seed level
    if S == 1:
        reps = reps + rng.standard_normal(n_boot) * np.sqrt(c[0, 0])
        level = _Level(1.0, np.inf)
    elif method == "crossed":
        reps = reps + rng.standard_normal(n_boot) * np.sqrt(model.shared * (S - 1) / S)
        level = _Level(np.sqrt(S / (S - 1)), model.nu)
    else:
        lam, vec = np.linalg.eigh(c)
        root = vec * np.sqrt(np.clip(lam, 0.0, None))  # [S, S]: root @ root.T == C, clipped
        e = rng.standard_normal((n_boot, S)) @ root.T  # [B, S] ~ N(0, C)
        reps = reps + np.take_along_axis(e, idx, axis=1).mean(axis=1)
        level = _Level(np.sqrt(S / (S - 1)), S - 1.0)
    reps.sort()
    lo, hi = np.quantile(reps, [level.tail(alpha), 1 - level.tail(alpha)])
    # The quantile levels at which the interval's ends cross 0 (or the margins), mapped back
    # through the expansion: p < alpha exactly when the interval at alpha excludes 0, wherever
    # at least RESOLVED replicates lie beyond the bound. Further out the replicates cannot say
    # how far out (all of them on one side would give 1 / n_boot whatever the effect, a floor
    # that Holm's correction turns into false wins): there the tail is the model's t.
    tail = _TailModel(model.mean, *(_pigeonhole_scale(reps, level) if method == "pigeonhole"
                                    and S > 1 else (model.se, model.nu)))
    below, above = _pos_right(reps, 0.0), 1.0 - _pos_left(reps, 0.0)
    if min(below, above) * n_boot >= RESOLVED:
        p = min(1.0, 2 * level.one_sided(min(below, above)))
    else:
        p = min(1.0, 2 * tail.beyond(0.0, upper=above > below))
    p_equivalent = float("nan")
    if margin is not None:  # H0: Delta <= -margin, and H0: Delta >= margin
        u_lower, u_upper = _pos_right(reps, -margin), 1.0 - _pos_left(reps, margin)
        p_lower = (level.one_sided(u_lower) if u_lower * n_boot >= RESOLVED
                   else tail.beyond(-margin, upper=True))
        p_upper = (level.one_sided(u_upper) if u_upper * n_boot >= RESOLVED
                   else tail.beyond(margin, upper=False))
        p_equivalent = max(p_lower, p_upper)
    var_rows = max(float(c.sum()) / S**2, 0.0)
    total = model.var if S > 1 else var_rows
    share = 1.0 if S == 1 else (min(1.0, var_rows / total) if total > 0 else float("nan"))
    return TwoLevelResult(model.mean, float(lo), float(hi), float(p),
                          _p_beats(model, higher_is_better), float(p_equivalent), S, n_boot,
                          share, method)


# ---------------------------------------------------------------------------------- helpers
class _Level(NamedTuple):
    """The expanded percentile level: the tail whose normal quantile is ``factor * t_nu``."""

    factor: float
    nu: float

    def tail(self, alpha: float) -> float:
        """Tail level (each side) of the interval at two-sided level alpha."""
        return float(stats.norm.sf(self.factor * _t_isf(alpha / 2, self.nu)))

    def one_sided(self, u: float) -> float:
        """The inverse: the one-sided p value of a bound at quantile level u of the replicates
        (in [0, 1]): the alpha at which the interval at level 2 alpha has tails u."""
        if u <= 0:
            return 0.0
        if u >= 1:
            return 1.0
        z = stats.norm.isf(u) / self.factor
        return t_sf(z, self.nu)


def _t_isf(q: float, nu: float) -> float:
    return float(stats.norm.isf(q) if np.isinf(nu) else stats.t.isf(q, nu))


def _pos_right(r: np.ndarray, x: float) -> float:
    """sup {q : quantile(r, q) <= x} for sorted r (numpy's linear quantile)."""
    B = len(r)
    j = int(np.searchsorted(r, x, side="right")) - 1
    if j < 0:
        return 0.0
    if j >= B - 1:
        return 1.0
    return (j + (x - r[j]) / (r[j + 1] - r[j])) / (B - 1)


def _pos_left(r: np.ndarray, x: float) -> float:
    """inf {q : quantile(r, q) >= x} for sorted r."""
    B = len(r)
    j = int(np.searchsorted(r, x, side="left"))
    if j == 0:
        return 0.0
    if j >= B:
        return 1.0
    return (j - 1 + (x - r[j - 1]) / (r[j] - r[j - 1])) / (B - 1)


class _TailModel(NamedTuple):
    """The t model a p value falls back on beyond the replicates' resolution."""

    mean: float
    se: float
    nu: float

    def beyond(self, bound: float, *, upper: bool) -> float:
        """One-sided p of H0: Delta <= bound (upper=True: the mean lies above it) or of
        H0: Delta >= bound (upper=False): P(T_nu > +-(mean - bound) / se)."""
        if self.se <= 0:
            return 0.0 if (self.mean > bound) == upper and self.mean != bound else 1.0
        x = (self.mean - bound) / self.se * (1.0 if upper else -1.0)
        return t_sf(x, self.nu)


def _pigeonhole_scale(reps: np.ndarray, level: _Level) -> tuple[float, float]:
    """(se, nu) of the pigeonhole replicates' own t model: their sd, expanded as the interval."""
    return float(np.std(reps) * level.factor), level.nu


def _p_beats(model: Crossed, higher_is_better: bool) -> float:
    """P(a run of the arm beats the baseline's run of its seed, on a new test set) under the
    crossed normal model: Phi(mean / sqrt(s^2 + G)), sign flipped when lower is better."""
    z = model.mean if higher_is_better else -model.mean
    sd = np.sqrt(model.var_seeds * model.n_seeds + model.shared)
    if sd <= 0:
        return float((np.sign(z) + 1) / 2)
    return float(stats.norm.cdf(z / sd))


def _rows_mask(rows, n: int) -> np.ndarray | None:
    if rows is None:
        return None
    r = np.asarray(rows)
    if r.dtype != np.bool_ or r.shape != (n,):
        raise DataError(f"rows must be a boolean mask with one entry per row ({n}); got "
                        f"{r.dtype} of shape {r.shape}")
    return r


def _scatter(v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return v
    out = np.zeros(len(mask))
    out[mask] = v
    return out
