"""Statistics for comparing a loss against BCE: AUCs, DeLong, a bootstrap CI, paired tests,
multiple-comparison corrections, RelaImpr, the crossed (seeds x test rows) model with its
two-level t-test and bootstrap, and equivalence tests (TOST). Numpy arrays in, Python floats /
dataclasses out.
"""

from prlbench.stats.auc import auc, group_auc, relaimpr
from prlbench.stats.bootstrap import MeanCI, bootstrap_mean_ci
from prlbench.stats.crossed import Crossed, crossed, two_level_tost, two_level_ttest
from prlbench.stats.delong import DelongResult, fast_delong
from prlbench.stats.equivalence import parse_margins, tost_ttest, tost_wilcoxon
from prlbench.stats.logloss import logloss, row_logloss
from prlbench.stats.multiple import benjamini_hochberg, holm
from prlbench.stats.paired import TestResult, min_wilcoxon_p, paired_ttest, wilcoxon_signed_rank
from prlbench.stats.twolevel import (SeedDelta, TwoLevelResult, auc_influence, mean_influence,
                                     paired_delta, row_covariance, two_level_bootstrap)

__all__ = [
    "auc", "group_auc", "relaimpr",
    "fast_delong", "DelongResult",
    "bootstrap_mean_ci", "MeanCI",
    "paired_ttest", "wilcoxon_signed_rank", "min_wilcoxon_p", "TestResult",
    "holm", "benjamini_hochberg",
    "auc_influence", "mean_influence", "paired_delta", "SeedDelta", "row_covariance",
    "two_level_bootstrap", "TwoLevelResult",
    "two_level_ttest", "two_level_tost", "crossed", "Crossed",
    "tost_ttest", "tost_wilcoxon", "parse_margins",
    "logloss", "row_logloss",
]
