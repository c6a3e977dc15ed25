"""CSV: every number of the summary at full precision, for the reader's own analysis.

cells.csv: one row per data set, model, metric and arm (the baseline's rows hold mean / std only);
runs.csv: one row per run (every metric of metrics.json); delong.csv: DeLong's test per seed.
Floats are written by Python's repr, so they read back exactly.
"""

from __future__ import annotations

from prlbench.report.analysis import Summary

# Every column of each CSV a report writes: (name, type, meaning). docs/results-format.md is
# generated from these, and the tests check that the files hold exactly these columns.
CELLS_CSV = (
    ("dataset", "string", "the data set (a variant as its canonical id)"),
    ("model", "string", "the model"),
    ("metric", "string", "the test metric (metrics.json's key: ctr_auc, ctcvr_logloss, ...)"),
    ("arm", "string", "the loss with its own settings, in the spec grammar (pwiser[lam=1])"),
    ("loss", "string", "the loss's name"),
    ("is_baseline", "boolean", "true on the baseline's (bce's) rows, which hold mean / std "
                               "only"),
    ("params", "string", "JSON: every parameter of the loss as the runs used it"),
    ("lr", "number", "the learning rate the runs used (chosen on validation where tuned)"),
    ("weight_decay", "number", "the Adam weight decay the runs used"),
    ("n", "integer", "runs in the cell (seeds)"),
    ("mean", "number", "mean of the metric over the cell's seeds"),
    ("std", "number or empty", "its sample standard deviation (empty with one seed)"),
    ("seeds", "string", "the cell's seeds, separated by ;"),
    ("n_pairs", "integer or empty", "seeds that both the arm and the baseline have"),
    ("paired_seeds", "string", "those seeds, separated by ;"),
    ("mean_paired", "number", "the arm's mean over the paired seeds"),
    ("base_mean_paired", "number", "the baseline's mean over the same seeds"),
    ("delta_mean", "number", "Δ: mean paired difference, arm minus baseline"),
    ("delta_lo", "number", "lower bound of the CI the tables show (see ci)"),
    ("delta_hi", "number", "upper bound of that CI"),
    ("ci", "string", "which CI delta_lo / delta_hi are: two-level (seeds and test rows) or "
                     "seeds (over seeds only)"),
    ("seed_lo", "number", "lower bound of the seed-only bootstrap CI (test rows fixed)"),
    ("seed_hi", "number", "its upper bound"),
    ("boot_lo", "number", "lower bound of the two-level CI (empty without predictions)"),
    ("boot_hi", "number", "its upper bound"),
    ("boot_seeds", "integer", "seeds in the two-level CI"),
    ("seed_var", "number", "s²/S: the seeds' variance of Δ over the number of seeds"),
    ("shared_var", "number", "G: the test-set noise every seed shares (row influences)"),
    ("row_share", "number", "the test rows' share of the two-level bootstrap's variance"),
    ("p_beats", "number", "P(a run of the arm beats the baseline's run of the same seed on a "
                          "new test set): Φ(Δ̄ / √(s² + G))"),
    ("relaimpr", "number", "RelaImpr in %: ((AUC − 0.5) / (AUC_base − 0.5) − 1) × 100 (AUC "
                           "metrics only)"),
    ("twolevel_t", "number", "the two-level t: Δ̄ / √(s²/S + G)"),
    ("twolevel_df", "number", "its Satterthwaite degrees of freedom"),
    ("twolevel_p", "number", "its two-sided p"),
    ("ttest_t", "number", "paired t over seeds (test set fixed)"),
    ("ttest_p", "number", "its p"),
    ("wilcoxon_w", "number", "Wilcoxon signed-rank statistic over seeds"),
    ("wilcoxon_p", "number", "its exact p"),
    ("boot_p", "number", "the two-level bootstrap's p"),
    ("p", "number", "the p of the test that sets the marker (--test)"),
    ("p_adj", "number", "p after the correction (--correction) within the table's family"),
    ("significant", "boolean", "p_adj < 0.05"),
    ("better", "boolean", "Δ in the better direction (higher AUC, lower logloss)"),
    ("margin", "number or empty", "the equivalence margin of the metric's kind (--equivalence)"),
    ("eq_p", "number or empty", "the equivalence (TOST) p of the chosen test"),
    ("twolevel_eq_p", "number or empty", "the two-level t's TOST p"),
    ("boot_eq_p", "number or empty", "the two-level bootstrap's TOST p"),
    ("eq_p_adj", "number or empty", "eq_p after the correction, in a family of its own"),
    ("equivalent", "boolean", "not significant and eq_p_adj < 0.05"),
    ("outcome", "string", "win, n.s., loss, equivalent or untested (empty for the baseline)"),
    ("delong_n", "integer", "seeds with DeLong's test (AUC metrics with predictions)"),
    ("delong_sig", "integer", "of those, seeds where DeLong's p < 0.05"),
    ("delong_median_p", "number", "the median of DeLong's p over the seeds"),
    ("delong_p", "string", "each seed's DeLong p, separated by ; (delong.csv has them by seed)"),
    ("family", "string", "the correction family: the metric's kind (auc or logloss)"),
)
RUNS_CSV = (
    ("dataset", "string", "the data set"),
    ("model", "string", "the model"),
    ("loss", "string", "the loss's name"),
    ("params", "string", "JSON: every parameter of the loss"),
    ("seed", "integer", "the run's seed"),
    ("run_id", "string", "the run id"),
    ("run_dir", "string", "the run folder"),
    ("best_epoch", "integer", "the epoch early stopping chose"),
    ("threads", "integer", "torch threads the run used"),
    ("lr", "number", "the learning rate"),
    ("weight_decay", "number", "the Adam weight decay"),
    ("embedding_optimizer", "string", "adam, sparse_adam or rowwise_adagrad"),
    ("split", "string", "the evaluation split of the metrics (test or test_random)"),
    ("packed", "boolean", "trained in a pack (--pack)"),
    ("stacked_pack", "boolean", "trained in a stacked pack (one batched model)"),
    ("device_name", "string", "the device that trained it (run.json's versions)"),
    ("git_commit", "string", "the prlbench commit that trained it, where known"),
    ("<metric>", "number", "every test metric of its metrics.json (the metrics.json table "
                           "above), one column each"),
    ("seconds", "number", "training time in seconds (metrics.json)"),
    ("arm", "string", "the arm (loss with its own settings) the run belongs to"),
)
DELONG_CSV = (
    ("dataset", "string", "the data set"),
    ("model", "string", "the model"),
    ("metric", "string", "the AUC metric"),
    ("arm", "string", "the arm compared with the baseline"),
    ("seed", "integer", "the seed whose two runs' test predictions were compared"),
    ("auc_arm", "number", "the arm's AUC on that seed's test predictions"),
    ("auc_base", "number", "the baseline's AUC on the same rows"),
    ("diff", "number", "auc_arm − auc_base"),
    ("z", "number", "DeLong's z"),
    ("p", "number", "its two-sided p (not corrected)"),
)
SWEEP_CSV = (
    ("base", "string", "the generated data set whose variants are swept (synthetic)"),
    ("knob", "string", "the knob that differs between them (noise_rate, ...)"),
    ("value", "number", "its value in this row's variant"),
    ("dataset", "string", "the variant"),
    ("model", "string", "the model"),
    ("metric", "string", "the AUC metric (ctr_auc_noise_free: CTR AUC against the noise-free "
                         "clicks)"),
    ("arm", "string", "the arm"),
    ("delta_mean", "number", "Δ against the baseline (as in cells.csv)"),
    ("delta_lo", "number", "the CI's lower bound"),
    ("delta_hi", "number", "its upper bound"),
    ("outcome", "string", "the cell's outcome (as in cells.csv)"),
    ("significant", "boolean", "whether the cell's test is significant after correction"),
)
CSV_FILES = {"cells.csv": CELLS_CSV, "runs.csv": RUNS_CSV, "delong.csv": DELONG_CSV,
             "sweep.csv": SWEEP_CSV}
CELL_COLUMNS = [name for name, _, _ in CELLS_CSV]


def to_csv(summary: Summary) -> str:
    """The cells frame: the columns above first (in that order), then any others."""
    cells = summary.cells
    cols = [c for c in CELL_COLUMNS if c in cells] + [c for c in cells if c not in CELL_COLUMNS]
    return cells[cols].to_csv(index=False, lineterminator="\n")


def runs_csv(summary: Summary) -> str:
    return summary.runs.to_csv(index=False, lineterminator="\n")


def delong_csv(summary: Summary) -> str:
    return summary.delong.to_csv(index=False, lineterminator="\n")
