"""CSV: every number of the summary at full precision, for the reader's own analysis.

cells.csv: one row per data set, model, metric and arm (the baseline's rows hold mean / std only);
runs.csv: one row per run (every metric of metrics.json); delong.csv: DeLong's test per seed.
Floats are written by Python's repr, so they read back exactly.
"""

from __future__ import annotations

from prlbench.report.analysis import Summary

CELL_COLUMNS = [
    "dataset", "model", "metric", "arm", "loss", "is_baseline", "params", "lr", "weight_decay",
    "n", "mean", "std", "seeds", "n_pairs", "paired_seeds", "mean_paired", "base_mean_paired",
    "delta_mean", "delta_lo", "delta_hi", "ci", "seed_lo", "seed_hi", "boot_lo", "boot_hi",
    "boot_seeds", "seed_var", "shared_var", "row_share", "p_beats", "relaimpr", "twolevel_t",
    "twolevel_df", "twolevel_p", "ttest_t", "ttest_p", "wilcoxon_w", "wilcoxon_p", "boot_p", "p",
    "p_adj", "significant", "better", "margin", "eq_p", "twolevel_eq_p", "boot_eq_p", "eq_p_adj",
    "equivalent", "outcome", "delong_n", "delong_sig", "delong_median_p",
    "delong_p",
]


def to_csv(summary: Summary) -> str:
    """The cells frame: the columns above first (in that order), then any others."""
    cells = summary.cells
    cols = [c for c in CELL_COLUMNS if c in cells] + [c for c in cells if c not in CELL_COLUMNS]
    return cells[cols].to_csv(index=False, lineterminator="\n")


def runs_csv(summary: Summary) -> str:
    return summary.runs.to_csv(index=False, lineterminator="\n")


def delong_csv(summary: Summary) -> str:
    return summary.delong.to_csv(index=False, lineterminator="\n")
