"""The crossed seeds x test-rows model of each cell's delta: its two-level t-test and its
two-level bootstrap CI (seeds resampled, plus the test-set noise they share).

Every run of a data set wrote its test predictions in the same row order, so the baseline's and
an arm's scores of one seed are paired row by row (checked on the labels), and one resample of
the test rows applies to every seed and both arms, as they share the test set. Per cell, each
seed contributes its delta and the delta's first-order influence per test row
(prlbench.stats.twolevel); the rows-level covariance of the seeds' deltas follows from those,
and the resampling itself never touches the rows again.

Memory: one metric of one (arm, data set, model) at a time: the influence vectors of its seeds
(float32, 4 bytes x rows x seeds) and one seed's prediction columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prlbench import stats
from prlbench.metrics import METRICS, lower_is_better
from prlbench.stats import twolevel

# The columns this adds to the cells frame.
COLUMNS = ["boot_lo", "boot_hi", "boot_p", "boot_eq_p", "p_beats", "row_share", "boot_seeds",
           "seed_var", "shared_var", "twolevel_t", "twolevel_df", "twolevel_p", "twolevel_eq_p"]


def metric_spec(name: str):
    """(kind, label column, score column, row filter column) of a metric the two-level
    bootstrap can resample: a pooled AUC ("auc") or a logloss ("mean" of per-row losses);
    None for any other (GAUC is a mean over groups, counts compare nothing)."""
    m = METRICS.get(name)
    if m.label is None or m.score is None or m.split != "test":
        return None
    if m.kind == "auc":
        return "auc", m.label, m.score, m.rows
    if m.kind == "logloss":
        return "mean", m.label, m.score, m.rows
    return None


def per_cell(group: pd.DataFrame, baseline: str, metrics: tuple[str, ...], *, n_boot: int,
             seed: int, alpha: float, margins: dict[str, float], warnings: list[str]) -> list[dict]:
    """Rows (KEYS + COLUMNS) for every non-baseline arm x metric of one (data set, model):
    the two-level bootstrap CI and p, and the crossed model's two-level t-test (its s^2 / S in
    seed_var, its G in shared_var); `margins`: the equivalence margin per metric kind."""
    from prlbench.report._delong import check_aligned, read_predictions

    metrics = tuple(m for m in metrics if metric_spec(m) is not None)
    base = group[group["arm"] == baseline].set_index("seed")
    out = []
    for arm, runs in group[group["arm"] != baseline].groupby("arm", sort=False):
        runs = runs.set_index("seed")
        seeds = sorted(set(runs.index) & set(base.index))
        if len(seeds) < 2:  # one seed has no spread: no CI of the seeds' mean (as seed-only)
            continue
        for metric in metrics:
            kind, label, score, where = metric_spec(metric)
            if metric not in runs or runs.loc[seeds, metric].isna().any():
                continue  # a metric the runs did not report (CVR logloss of a capped p_cvr)
            cols = sorted({label, score} | ({where} if where else set()))
            deltas, phis = [], []
            for s in seeds:
                b = read_predictions(Path(base.at[s, "run_dir"]), cols, warnings,
                                     _split(base, s))
                a = read_predictions(Path(runs.at[s, "run_dir"]), cols, warnings,
                                     _split(runs, s))
                if a is None or b is None or not all(c in a and c in b for c in cols):
                    deltas = None
                    break
                check_aligned(b, a, base.at[s, "run_dir"], runs.at[s, "run_dir"])
                rows = (a[where] == 1) if where else None
                if kind == "auc":
                    sd = twolevel.paired_delta("auc", a[label], a[score], b[score], rows=rows,
                                               dtype=np.float32)
                else:
                    sd = twolevel.paired_delta("mean", None, _row_loss(a[label], a[score]),
                                               _row_loss(b[label], b[score]), rows=rows,
                                               dtype=np.float32)
                if np.isnan(sd.delta):  # one class among the metric's rows: no AUC to resample
                    deltas = None
                    break
                reported = runs.at[s, metric] - base.at[s, metric]
                if not abs(sd.delta - reported) <= 1e-9 * max(1.0, abs(reported)):
                    warnings.append(
                        f"{runs.at[s, 'run_dir']}: its predictions give {metric} Δ "
                        f"{sd.delta:+.6g} against {base.at[s, 'run_dir']}, its metrics.json "
                        f"{reported:+.6g}: the files do not belong together (re-evaluate both "
                        "with prlbench evaluate); the two-level CI of that cell is left out")
                    deltas = None
                    break
                deltas.append(sd.delta)
                phis.append(sd.phi)
            if deltas is None:
                continue  # the missing file was named in the warnings
            cov = twolevel.row_covariance(phis)
            margin = margins.get(METRICS.get(metric).kind)
            res = twolevel.two_level_bootstrap(
                np.asarray(deltas), cov, higher_is_better=not lower_is_better(metric),
                n_boot=n_boot, seed=seed, alpha=alpha, margin=margin)
            model = stats.crossed(deltas, cov)
            t = stats.two_level_ttest(deltas, cov)
            eq = stats.two_level_tost(deltas, cov, margin).p if margin else float("nan")
            out.append({"dataset": group["dataset"].iloc[0], "model": group["model"].iloc[0],
                        "metric": metric, "arm": arm, "boot_lo": res.lo, "boot_hi": res.hi,
                        "boot_p": res.p, "boot_eq_p": res.p_equivalent,
                        "p_beats": res.p_beats, "row_share": res.row_share,
                        "boot_seeds": len(seeds), "seed_var": model.var_seeds,
                        "shared_var": model.shared, "twolevel_t": t.statistic,
                        "twolevel_df": t.df, "twolevel_p": t.p, "twolevel_eq_p": eq})
    return out


def _split(runs: pd.DataFrame, seed: int) -> str:
    return str(runs.at[seed, "split"]) if "split" in runs else "test"


def _row_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row log loss exactly as the engine computes the metric (same clip)."""
    return stats.row_logloss(y, p)
