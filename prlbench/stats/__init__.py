"""Statistics for comparing a loss against BCE: AUCs, DeLong, a bootstrap CI, paired tests,
multiple-comparison corrections and RelaImpr. Numpy arrays in, Python floats / dataclasses out.
"""

from prlbench.stats.auc import auc, group_auc, relaimpr
from prlbench.stats.bootstrap import MeanCI, bootstrap_mean_ci
from prlbench.stats.delong import DelongResult, fast_delong
from prlbench.stats.multiple import benjamini_hochberg, holm
from prlbench.stats.paired import TestResult, min_wilcoxon_p, paired_ttest, wilcoxon_signed_rank

__all__ = [
    "auc", "group_auc", "relaimpr",
    "fast_delong", "DelongResult",
    "bootstrap_mean_ci", "MeanCI",
    "paired_ttest", "wilcoxon_signed_rank", "min_wilcoxon_p", "TestResult",
    "holm", "benjamini_hochberg",
]
