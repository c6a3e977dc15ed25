"""From finished run folders to the statistics of every table cell.

`load_runs` reads one row per run; `summarise` pairs every loss with the baseline
(config.BASELINE, `bce`) by seed and computes, per (data set, model, metric, arm): mean and std
over seeds, the mean paired delta with a bootstrap CI over the per-seed deltas, RelaImpr, the
paired t-test and Wilcoxon signed-rank test over seeds, DeLong's test on each seed's test
predictions, the crossed seeds x test-rows model of the delta (prlbench.stats.crossed: its
two-level t-test, the default marker test, and the two-level bootstrap CI the tables show where
the predictions are there), and the chosen test's p value adjusted (Holm or Benjamini-Hochberg)
over every comparison of its table: the AUC metrics form one family, the loglosses another, each
over all data sets x models x arms (the tables and their metrics: prlbench.metrics). A cell is
a win / loss when it is significant and better / worse, "equivalent" when it is not and the
equivalence test (two one-sided tests against a margin per metric kind, corrected the same way)
says it lies within the margin, and "n.s." (not significant) otherwise: a difference the test
cannot see is not thereby absent.

Why the two-level t and not DeLong or a test over seeds alone decides significance: DeLong's
test treats the trained model as fixed, so with millions of test rows it calls a 0.0001 AUC
difference significant while a second seed of the same arm moves the AUC by more; a test over
seeds alone (Wilcoxon, paired t) holds the one test set all seeds share fixed, so when that set's
noise is a large part of the variance it rejects a true null far more often than its nominal rate.
The two-level t counts both, as the CI does.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prlbench import specs, stats
from prlbench.config import BASELINE
from prlbench.errors import DataError
from prlbench.metrics import METRICS, REPORTED, family, is_auc, lower_is_better
from prlbench.report import _delong, _twolevel

TESTS = ("twolevel", "wilcoxon", "ttest", "bootstrap")
DEFAULT_TEST = "twolevel"
# The cells column holding each test's p value, and its equivalence (TOST) p value.
TEST_P = {"twolevel": "twolevel_p", "wilcoxon": "wilcoxon_p", "ttest": "ttest_p",
          "bootstrap": "boot_p"}
TEST_EQ_P = {"twolevel": "twolevel_eq_p", "bootstrap": "boot_eq_p"}
# Tests over seeds alone, conditional on the test set; the report warns where the shared
# test-set noise G is at least this share of the crossed variance s^2/S + G: there their size
# is above ~6 % at a nominal 5 % (8 seeds, normal deltas; docs/statistics.md).
SEED_ONLY_TESTS = ("wilcoxon", "ttest")
SHARED_SHARE_WARN = 0.1
CORRECTIONS = {"holm": stats.holm, "bh": stats.benjamini_hochberg}
BOOT_SEED = 0  # the bootstrap's RNG seed: fixed, so a cell's CI never depends on the others
KEYS = ["dataset", "model", "metric", "arm"]
# A compared cell's outcome ("" for the baseline's own rows).
OUTCOMES = ("win", "n.s.", "loss", "equivalent", "untested")



# ------------------------------------------------------------------------------- load
def load_runs(run_dirs: list[Path], split: str = "test") -> pd.DataFrame:
    """One row per finished run: dataset, model, loss, params (JSON), arm, seed, run_id,
    run_dir, best_epoch and every number in metrics.json.

    `arm` is the loss name, plus the parameters that differ between runs of that loss within
    one (data set, model), e.g. "pwiser[lam=1]" next to "pwiser[lam=0.5]" (the loss-spec
    grammar, prlbench.specs); parameters chosen on
    validation (one setting per data set and model) keep the plain loss name.
    """
    if not run_dirs:
        raise DataError("no finished run folders to report on; train some first "
                        "(prlbench compare) or check --out")
    df = pd.DataFrame([_read_run(Path(d), split) for d in run_dirs])
    df["arm"] = _arm_labels(df)
    _check_unique(df)
    # Data sets and models keep the order of `run_dirs` (the grid's order); arms and seeds sort.
    order = {c: {v: i for i, v in enumerate(dict.fromkeys(df[c]))} for c in ("dataset", "model")}
    return df.sort_values(["dataset", "model", "arm", "seed"], kind="stable",
                          key=lambda s: s.map(order[s.name]) if s.name in order else s
                          ).reset_index(drop=True)


def _read_run(d: Path, split: str = "test") -> dict:
    from prlbench.store import RunFolder, RunStatus

    folder = RunFolder(d)
    for name in (RunFolder.RECORD, RunFolder.CONFIG, RunFolder.metrics_name(split)):
        if not folder.has(name):
            raise DataError(f"{d / name} is missing: the run folder is incomplete; re-run it "
                            f"(prlbench train / prlbench evaluate {shlex.quote(str(d))}) or "
                            "leave it out")
    run, cfg = folder.read_record(), folder.read_config()
    if run.status != RunStatus.DONE:
        raise DataError(f"{d / RunFolder.RECORD}: status is {run.status.value!r}, not 'done'; "
                        "finish the run or leave it out")
    metrics = folder.read_metrics(split)
    row = {"dataset": cfg.data.dataset, "model": cfg.model.name, "loss": cfg.loss.name,
           "params": json.dumps(_full_params(cfg.loss.name, cfg.loss.params), sort_keys=True),
           "seed": int(cfg.train.seed), "run_id": run.run_id or d.name,
           "run_dir": str(d), "best_epoch": run.best_epoch, "threads": run.threads,
           "lr": float(cfg.train.lr), "weight_decay": float(cfg.train.weight_decay),
           "embedding_optimizer": cfg.train.embedding_optimizer, "split": split,
           "packed": run.packed_with is not None,
           "stacked_pack": run.packed_with is not None and run.pack_mode != "turns",
           "device_name": run.versions.get("device_name", ""),
           "git_commit": run.versions.get("git_commit") or ""}
    row.update({k: v if isinstance(v, int) else float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)})  # counts stay ints
    if not _cvr_is_probability(cfg.model.name):  # a run made before 0.4 wrote it anyway
        row.pop("cvr_logloss", None)
    return row


def _without_capped_cvr_logloss(runs: pd.DataFrame) -> pd.DataFrame:
    """No CVR logloss for models whose p_cvr is capped (load_runs already drops it; a frame
    built otherwise gets the same rule); the column goes when no model has it."""
    if "cvr_logloss" not in runs:
        return runs
    runs = runs.copy()
    capped = ~runs["model"].map(_cvr_is_probability).astype(bool)
    runs.loc[capped, "cvr_logloss"] = np.nan
    return runs.drop(columns="cvr_logloss") if runs["cvr_logloss"].isna().all() else runs


def _cvr_is_probability(model: str) -> bool:
    """Whether the model's p_cvr is a probability by construction (no cap at 1): only then is
    its CVR logloss reported (see prlbench.engine.evaluate.test_metrics)."""
    from prlbench.models import MODELS

    return model not in MODELS or bool(getattr(MODELS.get(model), "guarantees_ctcvr_le_ctr",
                                               False))


def _full_params(loss: str, params: dict | None) -> dict:
    """A run's loss settings with the defaults of parameters added after it was made (a 0.2
    pwiser run has no "norm": it ran the "pairs" reading), so captions name every setting."""
    from prlbench.losses import LOSSES, loss_params

    return {**(loss_params(loss) if loss in LOSSES else {}), **(params or {})}


def _arm_labels(df: pd.DataFrame) -> pd.Series:
    labels = pd.Series(df["loss"], index=df.index, dtype=object)
    for _, group in df.groupby(["dataset", "model", "loss"], sort=False):
        settings = {p: json.loads(p) for p in group["params"].unique()}
        if len(settings) < 2:
            continue
        keys = sorted({k for s in settings.values() for k in s})
        varying = [k for k in keys if len({repr(s.get(k)) for s in settings.values()}) > 1]
        digits = {k: _digits([s.get(k) for s in settings.values()]) for k in varying}
        for idx, p in group["params"].items():  # the spec grammar: pwiser[lam=1]
            labels[idx] = specs.write(df.at[idx, "loss"], [
                (k, _fmt_value(settings[p].get(k), digits[k])) for k in varying])
    return labels


def _fmt_value(v, digits: int = 6) -> str:
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _digits(values: list) -> int:
    """The fewest significant digits (6 at least) that keep distinct values distinct in a label:
    lam=0.4285711 and lam=0.4285712 are two arms, not one "lam=0.428571" twice."""
    distinct = {repr(v) for v in values}
    for digits in range(6, 18):
        if len({_fmt_value(v, digits) for v in values}) == len(distinct):
            return digits
    return 17


def _check_unique(df: pd.DataFrame) -> None:
    dup = df[df.duplicated(["dataset", "model", "arm", "seed"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        same = dup[(dup[["dataset", "model", "arm", "seed"]] == first[
            ["dataset", "model", "arm", "seed"]]).all(axis=1)]
        raise DataError(f"two runs of {first.dataset}/{first.model}/{first.arm} seed {first.seed}: "
                        f"{' and '.join(same.run_dir)} (they differ in preset, overrides or "
                        "training settings); report on one of them")


# -------------------------------------------------------------------------- summarise
@dataclass
class Summary:
    """Every cell's statistics (`cells`, one row per data set, model, metric and arm, the
    baseline's rows holding mean / std only) and how they were computed."""

    cells: pd.DataFrame
    runs: pd.DataFrame
    delong: pd.DataFrame  # one row per data set, model, metric, arm and seed (may be empty)
    baseline: str
    metrics: tuple[str, ...]
    seeds: list[int]
    test: str
    correction: str
    alpha: float
    n_boot: int
    settings: dict[str, dict[str, list]]  # arm -> parameter -> the values used (sorted)
    losses: dict[str, str]  # arm -> loss name
    warnings: list[str] = field(default_factory=list)
    boot_seed: int = BOOT_SEED
    split: str = "test"
    # Loss settings chosen on validation: {"seed": first seed, "losses": {loss: {param:
    # candidates}}} (empty when every setting was fixed); compare fills it in.
    selection: dict = field(default_factory=dict)
    # Per data set, how its labels and test split were made where its cache says so (KuaiRand:
    # which deeper label is the conversion); compare fills it in from the manifests.
    data_notes: dict = field(default_factory=dict)
    # The equivalence margins per metric kind ({"auc": 0.002}; metric units) of the two
    # one-sided tests; None: none asked for. A kind without a margin is not tested.
    equivalence: dict[str, float] | None = None

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def n_comparisons(self) -> int:
        """Comparisons in the largest correction family (a family = the cells of one table)."""
        counts = self.cells[self.cells["p"].notna()].groupby("family").size()
        return int(counts.max()) if len(counts) else 0

    def n_comparisons_in(self, metrics: tuple[str, ...]) -> int:
        """Comparisons in the family of the table showing `metrics`."""
        fams = {family(m) for m in metrics}
        c = self.cells
        return int((c["p"].notna() & c["family"].isin(fams)).sum())

    @property
    def wtl(self) -> pd.DataFrame:
        """Wins / n.s. / losses, equivalent and untested cells per arm and metric ("n.s."
        counts every cell without a significant difference, the equivalent ones included)."""
        c = self.cells[~self.cells["is_baseline"]]
        counts = pd.crosstab([c["arm"], c["metric"]], c["outcome"])
        for col in OUTCOMES:
            if col not in counts:
                counts[col] = 0
        counts["n.s."] += counts["equivalent"]
        counts = counts[["win", "n.s.", "loss", "equivalent", "untested"]].reset_index()
        counts["_order"] = counts["metric"].map({m: i for i, m in enumerate(self.metrics)})
        counts = counts.sort_values(["arm", "_order"], kind="stable").drop(columns="_order")
        counts.columns.name = None
        return counts.rename(columns={"win": "wins", "loss": "losses"}).reset_index(drop=True)


def summarise(runs: pd.DataFrame, *, baseline: str = BASELINE,
              metrics: tuple[str, ...] = REPORTED, test: str = DEFAULT_TEST,
              correction: str = "holm", alpha: float = 0.05, n_boot: int = 10000,
              delong: bool = True, two_level: bool = True,
              equivalence: float | str | dict | None = None) -> Summary:
    """Pair every arm with `baseline` by seed and compute each cell's statistics (see module doc).

    The bootstraps use the fixed seed BOOT_SEED. `delong=False` skips DeLong's test and
    `two_level=False` the two-level statistics (both read the predictions); the tests
    "twolevel" and "bootstrap" need them. `equivalence`: the margins of the two one-sided
    tests per metric kind (stats.parse_margins: a number is the AUC margin).
    """
    _check_options(test, correction, alpha)
    equivalence = stats.parse_margins(equivalence)
    two_level = two_level or test in ("twolevel", "bootstrap")
    runs = _without_capped_cvr_logloss(runs)
    warnings: list[str] = []
    metrics = _available(runs, tuple(metrics), warnings)
    rows, delong_rows, boot_rows = [], [], []
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=False):
        base = group[group["arm"] == baseline]
        if base.empty:
            warnings.append(f"{dataset}/{model}: no {baseline} runs, so no deltas or tests there")
        for metric in metrics:
            rows.append(_cell(base, dataset, model, metric, baseline, None, n_boot))
            for arm, sub in group[group["arm"] != baseline].groupby("arm", sort=False):
                rows.append(_cell(sub, dataset, model, metric, arm, base, n_boot))
        if delong and not base.empty:
            delong_rows += _delong.per_seed(group, baseline, metrics, warnings)
        if two_level and not base.empty:
            boot_rows += _twolevel.per_cell(group, baseline, metrics, n_boot=n_boot,
                                            seed=BOOT_SEED, alpha=alpha,
                                            margins=equivalence or {},
                                            warnings=warnings)
    cells = pd.DataFrame(rows)
    # A grid where only the baseline finished has no paired rows: add their columns, empty.
    empty = pd.Series(dtype=float)
    for col in _paired(empty, empty, metrics[0] if metrics else "ctr_auc", 0):
        if col not in cells:
            cells[col] = np.nan
    dl = pd.DataFrame(delong_rows, columns=_delong.COLUMNS)
    cells = _add_delong(cells, dl, alpha)
    cells = _add_two_level(cells, boot_rows)
    cells = _add_equivalence(cells, test, equivalence)
    cells = _decide(cells, test, correction, alpha)
    for col in ("n", "n_pairs", "delong_n", "delong_sig"):  # counts: integers, NA where none
        cells[col] = cells[col].astype("Int64")
    seeds = sorted(int(s) for s in runs["seed"].unique())
    warnings += _pairing_warnings(cells, seeds) + _power_warnings(cells, test, correction, alpha)
    warnings += (_undefined_test_warnings(cells, test) + _untested_warnings(cells, test)
                 + _seed_only_warnings(cells, test) + _thread_warnings(runs)
                 + _pack_warnings(runs))
    warnings = list(dict.fromkeys(warnings))  # a missing file is met by DeLong and bootstrap
    return Summary(cells=cells, runs=runs.copy(), delong=dl, baseline=baseline,
                   metrics=metrics, seeds=seeds, test=test, correction=correction, alpha=alpha,
                   n_boot=n_boot, settings=_settings(runs), losses=_arm_losses(runs),
                   warnings=warnings, equivalence=equivalence,
                   split=str(runs["split"].iloc[0]) if "split" in runs and len(runs) else "test")


def _check_options(test: str, correction: str, alpha: float) -> None:
    if test not in TESTS:
        raise DataError(f"test must be one of {', '.join(TESTS)}, not {test!r}")
    if correction not in CORRECTIONS:
        raise DataError(f"correction must be one of {', '.join(CORRECTIONS)}, not {correction!r}")
    if not 0 < alpha < 1:
        raise DataError(f"alpha must lie in (0, 1), e.g. 0.05; got {alpha}")


def _available(runs: pd.DataFrame, metrics: tuple[str, ...], warnings: list[str]) -> tuple:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:  # its direction and correction family would be unknown
        raise DataError(f"unknown metric(s) {', '.join(unknown)}; valid metrics: "
                        f"{', '.join(METRICS)}")
    # CVR logloss exists only for models with a probability p_cvr: its absence is no surprise.
    missing = [m for m in metrics if m not in runs.columns and m != "cvr_logloss"]
    if missing:
        warnings.append(f"metrics not in any run's metrics.json, left out: {', '.join(missing)}")
    kept = tuple(m for m in metrics if m in runs.columns)
    if not kept:
        raise DataError(f"none of the metrics {', '.join(metrics)} is in the runs' metrics.json")
    return kept


def _cell(sub: pd.DataFrame, dataset: str, model: str, metric: str, arm: str,
          base: pd.DataFrame | None, n_boot: int) -> dict:
    """One row of the cells frame; `base` None marks the baseline's own row."""
    values = sub.set_index("seed")[metric].dropna()
    row = {"dataset": dataset, "model": model, "metric": metric, "arm": arm,
           "loss": sub["loss"].iloc[0] if len(sub) else arm, "is_baseline": base is None,
           "params": ";".join(sub["params"].unique()), "n": len(values),
           "mean": values.mean() if len(values) else np.nan,
           "std": values.std(ddof=1) if len(values) > 1 else np.nan,
           "seeds": ";".join(str(s) for s in values.index),
           **{k: ";".join(repr(float(v)) for v in sorted(sub[k].unique())) if k in sub else ""
              for k in ("lr", "weight_decay")}}
    if base is not None:
        row.update(_paired(values, base.set_index("seed")[metric].dropna(), metric, n_boot))
    return row


def _paired(arm: pd.Series, base: pd.Series, metric: str, n_boot: int) -> dict:
    """Statistics of arm - baseline over the seeds both have (pairing by seed)."""
    common = sorted(set(arm.index) & set(base.index))
    a, b = arm.loc[common].to_numpy(float), base.loc[common].to_numpy(float)
    d = a - b
    out = {"n_pairs": len(common), "paired_seeds": ";".join(str(s) for s in common),
           "mean_paired": a.mean() if len(d) else np.nan,
           "base_mean_paired": b.mean() if len(d) else np.nan,
           "delta_mean": d.mean() if len(d) else np.nan, "delta_lo": np.nan, "delta_hi": np.nan,
           "seed_lo": np.nan, "seed_hi": np.nan, "_deltas": d,
           "relaimpr": np.nan, "ttest_t": np.nan, "ttest_p": np.nan, "wilcoxon_w": np.nan,
           "wilcoxon_p": np.nan}
    if is_auc(metric) and len(d):
        out["relaimpr"] = stats.relaimpr(a.mean(), b.mean())
    if len(d) >= 2:  # one pair has no spread: no CI and no test
        ci = stats.bootstrap_mean_ci(d, n_boot=n_boot, seed=BOOT_SEED)
        t, w = stats.paired_ttest(a, b), stats.wilcoxon_signed_rank(a, b)
        out.update(delta_lo=ci.lo, delta_hi=ci.hi, seed_lo=ci.lo, seed_hi=ci.hi,
                   ttest_t=t.statistic, ttest_p=t.p,
                   wilcoxon_w=w.statistic, wilcoxon_p=w.p)
    return out


def _add_delong(cells: pd.DataFrame, dl: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per cell: seeds tested by DeLong, how many had p < alpha, the median p, each seed's p."""
    if dl.empty:
        for col in ("delong_n", "delong_sig", "delong_median_p", "delong_p"):
            cells[col] = np.nan if col != "delong_p" else ""
        return cells
    tested = dl.dropna(subset=["p"]).groupby(KEYS, sort=False)
    agg = pd.DataFrame({
        "delong_n": tested["p"].size(),
        "delong_sig": tested["p"].apply(lambda p: int((p < alpha).sum())),
        "delong_median_p": tested["p"].median(),
        "delong_p": tested["p"].apply(lambda p: ";".join(repr(float(x)) for x in p)),
    }).reset_index()
    return cells.merge(agg, on=KEYS, how="left")


def _add_two_level(cells: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """The two-level bootstrap's columns (boot_*, p_beats); where a cell has them, its CI
    (delta_lo / delta_hi, what the tables show) is the two-level one and `ci` says so; the
    seed-only CI stays in seed_lo / seed_hi."""
    boot = pd.DataFrame(rows, columns=KEYS + _twolevel.COLUMNS)
    boot[_twolevel.COLUMNS] = boot[_twolevel.COLUMNS].astype(float)
    cells = cells.drop(columns=[c for c in _twolevel.COLUMNS if c in cells]).merge(
        boot, on=KEYS, how="left")
    has = cells["boot_lo"].notna()
    cells["ci"] = np.where(cells["is_baseline"], "",
                           np.where(has, "two-level", np.where(cells["seed_lo"].notna(),
                                                               "seeds", "")))
    cells.loc[has, "delta_lo"] = cells.loc[has, "boot_lo"]
    cells.loc[has, "delta_hi"] = cells.loc[has, "boot_hi"]
    return cells


def _add_equivalence(cells: pd.DataFrame, test: str,
                     margins: dict[str, float] | None) -> pd.DataFrame:
    """eq_p: the equivalence test's p (two one-sided tests against +-margin, the margin of the
    cell's metric kind) with the chosen test: the two-level t or bootstrap (computed with the
    two-level statistics), or paired t / Wilcoxon over the per-seed deltas."""
    cells = cells.copy()
    cells["eq_p"] = np.nan
    cells["margin"] = np.nan
    if not margins:
        return cells
    kinds = cells["metric"].map(lambda m: METRICS.get(m).kind)
    cells["margin"] = kinds.map(margins).astype(float).where(~cells["is_baseline"])
    if test in TEST_EQ_P:
        cells["eq_p"] = cells[TEST_EQ_P[test]].where(cells["margin"].notna())
        return cells
    tost = {"ttest": stats.tost_ttest, "wilcoxon": stats.tost_wilcoxon}[test]
    for idx, r in cells[cells["margin"].notna()].iterrows():
        d = r["_deltas"]
        if isinstance(d, np.ndarray) and len(d) >= 2:
            cells.at[idx, "eq_p"] = tost(d, r["margin"]).p
    return cells


def _decide(cells: pd.DataFrame, test: str, correction: str, alpha: float) -> pd.DataFrame:
    cells = cells.copy()
    cells["p"] = cells[TEST_P[test]]
    cells.loc[cells["is_baseline"], "p"] = np.nan
    # Corrected within each table: all data sets x models x arms x metrics of that table; the
    # equivalence tests likewise, as a family of their own.
    cells["family"] = cells["metric"].map(family)
    cells["p_adj"] = np.nan
    cells["eq_p_adj"] = np.nan
    for _, idx in cells.groupby("family").groups.items():
        cells.loc[idx, "p_adj"] = CORRECTIONS[correction](cells.loc[idx, "p"].to_numpy(float))
        cells.loc[idx, "eq_p_adj"] = CORRECTIONS[correction](
            cells.loc[idx, "eq_p"].to_numpy(float))
    cells["significant"] = cells["p_adj"] < alpha  # NaN compares False
    cells["equivalent"] = cells["eq_p_adj"] < alpha
    sign = np.where(cells["metric"].map(lower_is_better), -1.0, 1.0)
    cells["better"] = (sign * cells["delta_mean"]) > 0
    cells["outcome"] = np.select(
        [cells["is_baseline"], cells["p_adj"].isna(), cells["significant"] & cells["better"],
         cells["significant"], cells["equivalent"]],
        ["", "untested", "win", "loss", "equivalent"], default="n.s.")
    for col in ("significant", "better", "equivalent"):  # not applicable to the baseline
        cells[col] = cells[col].astype("boolean").mask(cells["is_baseline"])
    return cells.drop(columns="_deltas")


def _pairing_warnings(cells: pd.DataFrame, seeds: list[int]) -> list[str]:
    out = []
    if len(seeds) == 1:
        out.append("only 1 seed: no significance test is possible (use 6 seeds or more)")
    arms = cells[~cells["is_baseline"]].drop_duplicates(["dataset", "model", "arm"])
    for r in arms.itertuples():
        if 0 < r.n_pairs < len(seeds) or r.n_pairs == 0:
            missing = sorted(set(seeds) - {int(s) for s in str(r.paired_seeds).split(";") if s})
            out.append(f"{r.dataset}/{r.model}/{r.arm}: paired with the baseline on "
                       f"{r.n_pairs} of {len(seeds)} seeds (unpaired: "
                       f"{', '.join(map(str, missing))})")
    return out


def _thread_warnings(runs: pd.DataFrame) -> list[str]:
    """On CPU a run's numbers depend on its torch thread count: say when the runs mix counts."""
    if "threads" not in runs:
        return []
    threads = runs["threads"].map(lambda t: "unrecorded" if pd.isna(t) else int(t))
    counts = threads.value_counts()
    if len(counts) < 2:
        return []
    mix = ", ".join(f"{n} thread{'s' if n != 1 else ''} ({k} runs)" if n != "unrecorded"
                    else f"unrecorded ({k} runs)"
                    for n, k in sorted(counts.items(), key=lambda nk: str(nk[0])))
    return [f"the runs were trained with different torch thread counts ({mix}); on CPU the "
            "numbers depend on it (float sums in another order), so paired runs may differ by "
            "more than their seeds do. Finished runs are reused whatever --threads says: delete "
            "the runs of the other count (runs.csv lists each run's threads and run_dir) or use "
            "a fresh --out, then rerun with one --threads setting"]


def _pack_warnings(runs: pd.DataFrame) -> list[str]:
    """A pack of prlbench 0.3 (weights stacked, one batched model) agreed with solo runs only
    to float tolerance, under the same run ids; packs since train each member with its solo
    arithmetic, byte for byte. Say when a table mixes stacked-pack runs with the others."""
    if "stacked_pack" not in runs or runs["stacked_pack"].nunique() < 2:
        return []
    n = int(runs["stacked_pack"].sum())
    return [f"{n} of the {len(runs)} runs were trained in a stacked pack of prlbench 0.3 (several "
            "seeds or losses as one batched model), the others alone or in packs since, which "
            "train byte for byte as alone; the two agree to float tolerance only (a run can stop "
            "at another epoch). For one way throughout, delete the stacked-pack runs (runs.csv: "
            "stacked_pack, run_dir) and rerun"]


def _undefined_test_warnings(cells: pd.DataFrame, test: str) -> list[str]:
    """The t-test is undefined when every seed's difference is the same (zero variance)."""
    c = cells[~cells["is_baseline"] & (cells["n_pairs"] >= 2) & cells["p"].isna()
              & (cells["delta_mean"] != 0)]
    if test == "twolevel":  # not the cells without predictions (_untested_warnings)
        c = c[c["seed_var"].notna()]
    if test not in ("ttest", "twolevel") or c.empty:
        return []
    where = ", ".join(f"{r.dataset}/{r.model}/{r.arm}/{r.metric}" for r in c.head(3).itertuples())
    more = f" and {len(c) - 3} more" if len(c) > 3 else ""
    return [f"t-test undefined for {len(c)} cell(s) ({where}{more}): every seed's difference "
            "was the same (zero variance, as AUCs on few positives move in steps) and the test "
            "rows added no variance; they are left untested; use more seeds or --test wilcoxon"]


def smallest_adjusted_p(test: str, correction: str, n_seeds: int, k: int) -> float:
    """The smallest adjusted p any cell can reach with `n_seeds` paired seeds and `k`
    comparisons in its family, whatever the data: Wilcoxon's exact p is at least 2 / 2**n,
    times k under Holm (under BH k equal smallest p stay themselves); the t-tests (paired,
    two-level) and the bootstrap (its tail is the two-level t's) have no floor: 0."""
    if test != "wilcoxon":
        return 0.0
    p_min = stats.min_wilcoxon_p(n_seeds)
    return min(1.0, (k if correction == "holm" else 1) * p_min)


def smallest_equivalence_p(test: str, correction: str, n_seeds: int, k: int) -> float:
    """The same for the equivalence family: the one-sided exact Wilcoxon p is at least
    1 / 2**n (0 for the t and bootstrap forms)."""
    if test != "wilcoxon":
        return 0.0
    return min(1.0, (k if correction == "holm" else 1) / 2.0 ** int(n_seeds))


def seeds_needed(correction: str, k: int, alpha: float, *, equivalence: bool = False) -> int:
    """Wilcoxon: the fewest seeds whose smallest adjusted p is below alpha."""
    factor = (k if correction == "holm" else 1) * (1 if equivalence else 2)
    return int(np.floor(np.log2(factor / alpha))) + 1


def _power_warnings(cells: pd.DataFrame, test: str, correction: str,
                    alpha: float) -> list[str]:
    """Say when the design cannot reach significance (or equivalence) at all, whatever the
    data (Wilcoxon only: the t-tests and the bootstrap have no floor)."""
    tested = cells.dropna(subset=["p"])
    if test != "wilcoxon" or tested.empty:
        return []
    n = int(tested["n_pairs"].max())
    k = int(tested.groupby(tested["metric"].map(family)).size().max())
    out = []
    p_min, adj = stats.min_wilcoxon_p(n), smallest_adjusted_p(test, correction, n, k)
    need = seeds_needed(correction, k, alpha)
    if p_min >= alpha:
        out.append(f"Wilcoxon with n={n} seeds cannot reach p < {alpha:g}: the smallest "
                   f"possible p is {p_min:.4g}; use {need} seeds or more (with this table's "
                   f"{correction} correction) or the default --test twolevel")
    elif adj >= alpha:
        out.append(f"Wilcoxon with n={n} seeds and Holm over {k} comparisons cannot reach "
                   f"significance: the smallest possible adjusted p is min(1, {k} x "
                   f"{p_min:.4g}) = {adj:.4g}; use {need} seeds or more, fewer metrics or arms, "
                   "the default --test twolevel, or --correction bh (which needs many small p "
                   "values)")
    eq = cells.dropna(subset=["margin"]) if "margin" in cells else cells.iloc[:0]
    if len(eq):
        k_eq = int(eq.groupby(eq["metric"].map(family)).size().max())
        eq_min = smallest_equivalence_p(test, correction, n, k_eq)
        if eq_min >= alpha:
            out.append(f"the Wilcoxon equivalence test (TOST) with n={n} seeds over {k_eq} "
                       f"comparisons cannot reach {alpha:g}: its smallest possible adjusted p "
                       f"is {eq_min:.4g}, so no cell can be called equivalent; use "
                       f"{seeds_needed(correction, k_eq, alpha, equivalence=True)} seeds or "
                       "more, or the default --test twolevel")
    return out


def _untested_warnings(cells: pd.DataFrame, test: str) -> list[str]:
    """The two-level tests need each run's predictions: name the cells left without them."""
    if test not in ("twolevel", "bootstrap"):
        return []
    c = cells[~cells["is_baseline"] & (cells["n_pairs"] >= 2) & cells["seed_var"].isna()]
    if c.empty:
        return []
    where = ", ".join(f"{r.dataset}/{r.model}/{r.arm}/{r.metric}" for r in c.head(3).itertuples())
    more = f" and {len(c) - 3} more" if len(c) > 3 else ""
    return [f"no two-level test for {len(c)} cell(s) ({where}{more}): it needs every paired "
            "run's predictions.parquet (see the warnings above); they are left untested. "
            "Re-evaluate the runs (prlbench evaluate RUN_DIR), or choose --test ttest / "
            "wilcoxon, which hold the test set fixed"]


def _seed_only_warnings(cells: pd.DataFrame, test: str) -> list[str]:
    """A test over seeds alone where the test set's shared noise is a large part of the
    variance: it answers "on this test set" and rejects a true null too often."""
    if test not in SEED_ONLY_TESTS or "shared_var" not in cells:
        return []
    total = cells["seed_var"] + cells["shared_var"]
    share = (cells["shared_var"] / total.where(total > 0)).where(~cells["is_baseline"])
    c = cells[share >= SHARED_SHARE_WARN]
    if c.empty:
        return []
    worst = c.loc[share[c.index].idxmax()]
    return [f"--test {test} holds the test set fixed, but in {len(c)} cell(s) the noise that "
            f"test set shares across seeds is {SHARED_SHARE_WARN:.0%} or more of the variance "
            f"of the mean delta (up to {share.max():.0%}: {worst['dataset']}/{worst['model']}/"
            f"{worst['arm']}/{worst['metric']}); there its markers say 'on this test set' and "
            "reject a true null more often than the nominal rate. The default --test twolevel "
            "counts that noise"]


def _settings(runs: pd.DataFrame) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}
    for arm, group in runs.groupby("arm", sort=True):
        values: dict[str, set] = {}
        for p in group["params"].unique():
            for k, v in json.loads(p).items():
                values.setdefault(k, set()).add(json.dumps(v))
        out[arm] = {k: sorted((json.loads(v) for v in vs), key=_value_order)
                    for k, vs in sorted(values.items())}
    return out


def _value_order(v) -> tuple:
    # Numbers numerically (0.5 < 1 < 10), then everything else by its text.
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    return (0, float(v), "") if number else (1, 0.0, str(v))


def _arm_losses(runs: pd.DataFrame) -> dict[str, str]:
    return dict(runs.drop_duplicates("arm")[["arm", "loss"]].itertuples(index=False))
