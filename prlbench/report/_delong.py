"""DeLong's test of each arm against the baseline on one seed's test predictions.

Every run of a data set wrote predictions.parquet with the test rows in the same order, so the
baseline's and the arm's scores of one seed are paired row by row (checked on the labels).
Memory: one (data set, model, seed) at a time, the baseline's columns plus one arm's.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from prlbench import stats
from prlbench.errors import DataError
from prlbench.metrics import select

# metric -> (label column, score column, row filter column or None): what its AUC was computed
# on, as the metric registry states it; every pooled test AUC (not GAUC, a mean over groups).
SPECS = {m.name: (m.label, m.score, m.rows) for m in select(split="test", kind="auc")
         if m.label is not None}
COLUMNS = ["dataset", "model", "metric", "arm", "seed", "auc_arm", "auc_base", "diff", "z", "p"]


def per_seed(group: pd.DataFrame, baseline: str, metrics: tuple[str, ...],
             warnings: list[str]) -> list[dict]:
    """DeLong rows for one (data set, model): every non-baseline arm x seed x AUC metric."""
    metrics = tuple(m for m in metrics if m in SPECS)
    if not metrics:
        return []
    out = []
    for seed, runs in group.groupby("seed", sort=True):
        base = runs[runs["arm"] == baseline]
        if base.empty:
            continue
        split = str(base["split"].iloc[0]) if "split" in base else "test"
        base_pred = _read(Path(base["run_dir"].iloc[0]), metrics, warnings, split)
        for r in runs[runs["arm"] != baseline].itertuples():
            pred = _read(Path(r.run_dir), metrics, warnings, split)
            if base_pred is None or pred is None:
                continue
            check_aligned(base_pred, pred, base["run_dir"].iloc[0], r.run_dir)
            for metric in metrics:
                res = _test(metric, pred, base_pred)
                if res is not None:
                    out.append({"dataset": r.dataset, "model": r.model, "metric": metric,
                                "arm": r.arm, "seed": int(seed), "auc_arm": res.auc1,
                                "auc_base": res.auc2, "diff": res.diff, "z": res.z, "p": res.p})
    return out


def _read(run_dir: Path, metrics: tuple[str, ...], warnings: list[str],
          split: str = "test") -> dict | None:
    return read_predictions(run_dir, {c for m in metrics for c in SPECS[m] if c is not None},
                            warnings, split, "DeLong")


def read_predictions(run_dir: Path, columns, warnings: list[str], split: str = "test",
                     what: str = "the two-level bootstrap") -> dict | None:
    """The run's prediction columns among `columns` that it has, or None (with a warning
    naming the file and the command that writes it) when its predictions file is missing."""
    from prlbench.store import RunFolder

    folder = RunFolder(run_dir)
    present = folder.prediction_columns(split)
    if present is None:
        extra = "" if split == "test" else f" --split {split}"
        warnings.append(f"{run_dir / RunFolder.predictions_name(split)} is missing: {what} "
                        f"skipped for that run (prlbench evaluate "
                        f"{shlex.quote(str(run_dir))}{extra} writes it)")
        return None
    wanted = set(columns) & present
    return folder.read_predictions(sorted(wanted), split)


def check_aligned(a: dict, b: dict, dir_a: str, dir_b: str) -> None:
    for col in ("click", "conversion"):
        if col in a and col in b and not np.array_equal(a[col], b[col]):
            raise DataError(f"predictions of {dir_a} and {dir_b} are not row-aligned (their "
                            f"'{col}' columns differ): were they evaluated on the same test "
                            "split? Re-evaluate both (prlbench evaluate)")


def _test(metric: str, pred: dict, base: dict):
    label, score, where = SPECS[metric]
    if label not in pred or score not in pred or score not in base:
        return None
    rows = pred[where] == 1 if where is not None else slice(None)
    y = pred[label][rows]
    return stats.fast_delong(y, pred[score][rows], base[score][rows])
