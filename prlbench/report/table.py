"""The one table model that every renderer draws: rows (data set, model, arm), columns (metrics),
cells with their numbers and flags, a caption generated from the summary, and the wins / n.s. /
losses summary. Renderers only format; every decision (what is best, what is significant) is here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prlbench.metrics import display_name, lower_is_better, table_metrics
from prlbench.report.analysis import Summary
from prlbench.report.caption import (  # noqa: F401  (the names renderers and reports use)
    CELLS, CORRECTION_NAMES, TEST_NAMES, arm_name, caption, ci_name, dataset_name,
    detail_caption, loss_name, model_name, paper_caption, seed_list, table_margins)

DISPLAY = 4  # decimals shown; "best" is judged on the shown value, so shown ties are both bold


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float  # nan with one seed
    n: int
    best: bool = False
    # Non-baseline arms only (None / nan otherwise):
    delta: float = np.nan
    lo: float = np.nan  # bootstrap CI of the mean paired delta; nan with < 2 pairs
    hi: float = np.nan
    relaimpr: float = np.nan  # percent; AUC metrics only
    n_pairs: int = 0
    p_adj: float = np.nan  # nan: untested
    outcome: str = ""  # analysis.OUTCOMES: win, n.s., loss, equivalent, untested ("": baseline)


@dataclass(frozen=True)
class Row:
    dataset: str
    model: str
    arm: str
    is_baseline: bool
    cells: tuple[Cell | None, ...]  # one per metric; None where the arm has no value


@dataclass(frozen=True)
class Table:
    kind: str
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    caption: str
    label: str
    baseline: str
    wtl: tuple[tuple, ...]  # (arm, metric, wins, n.s., losses, equivalent, untested)
    notes: tuple[str, ...]  # the summary's warnings
    equivalence: dict | None = None  # the equivalence margins per metric kind, if tested
    cells: str = "std"  # what a paper-layout cell shows beside its mean: CELLS
    paper_caption: str = ""  # the paper layout's short caption (one table)
    paper_caption_split: str = ""  # the same for a layout split into several tables
    detail_caption: str = ""  # the appendix (detail) table's short caption
    tested: bool = True  # whether any cell was tested (else no "untested" marks in papers)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(display_name(m) for m in self.metrics)


def build_table(summary: Summary, *, metrics: tuple[str, ...] | None = None,
                kind: str = "auc", cells: str = "std") -> Table:
    """The table of `kind` ("auc" or "logloss": its metrics present in the summary), or of the
    given `metrics`; `cells`: what a paper-layout cell shows beside its mean (CELLS)."""
    if cells not in CELLS:
        from prlbench.errors import ConfigError

        raise ConfigError(f"--cells {cells}: not a cell layout; valid: {', '.join(CELLS)}")
    if metrics is None:
        metrics = tuple(m for m in table_metrics(kind) if m in summary.metrics)
    frame = summary.cells[summary.cells["metric"].isin(metrics)]
    best = _best_flags(frame)
    rows = []
    for (dataset, model, arm), g in frame.groupby(["dataset", "model", "arm"], sort=False):
        by_metric = {r.metric: r for r in g.itertuples()}
        rows.append(Row(dataset, model, arm, bool(g["is_baseline"].iloc[0]),
                        tuple(_cell(by_metric.get(m), best) for m in metrics)))
    rows.sort(key=lambda r: _row_order(r, summary))
    wtl = summary.wtl
    wtl = wtl[wtl["metric"].isin(metrics)]
    return Table(kind=kind, metrics=tuple(metrics), rows=tuple(rows),
                 caption=caption(summary, metrics, kind), label=f"tab:prlbench-{kind}",
                 baseline=summary.baseline, wtl=tuple(wtl.itertuples(index=False, name=None)),
                 notes=tuple(summary.warnings),
                 equivalence=table_margins(summary, metrics) or None, cells=cells,
                 paper_caption=paper_caption(summary, metrics, kind, cells),
                 paper_caption_split=paper_caption(summary, metrics, kind, cells, parts=2),
                 detail_caption=detail_caption(summary, metrics, kind),
                 tested=summary.n_comparisons_in(metrics) > 0)


def _best_flags(cells) -> set:
    """Index labels of the best cells: per data set and metric, among models x arms, by the
    shown mean (higher for AUC, lower for logloss)."""
    best = set()
    for (_, metric), g in cells.groupby(["dataset", "metric"], sort=False):
        shown = g["mean"].round(DISPLAY).dropna()
        if shown.empty:
            continue
        target = shown.min() if lower_is_better(metric) else shown.max()
        best |= set(shown.index[shown == target])
    return best


def _cell(r, best: set) -> Cell | None:
    if r is None or r.n == 0:
        return None
    common = dict(mean=r.mean, std=r.std, n=int(r.n), best=r.Index in best)
    if r.is_baseline:
        return Cell(**common)
    return Cell(**common, delta=r.delta_mean, lo=r.delta_lo, hi=r.delta_hi,
                relaimpr=r.relaimpr, n_pairs=int(r.n_pairs), p_adj=r.p_adj, outcome=r.outcome)


def _row_order(row: Row, summary: Summary) -> tuple:
    # Data sets and models in the order first seen; the baseline first, then the arms by name.
    datasets = list(dict.fromkeys(summary.cells["dataset"]))
    models = list(dict.fromkeys(summary.cells["model"]))
    return (datasets.index(row.dataset), models.index(row.model), not row.is_baseline, row.arm)


# ------------------------------------------------------------- cell text (all renderers)
def mean_text(c: Cell) -> str:
    """"0.7234 ± 0.0012" (just the mean with one seed)."""
    if np.isnan(c.std):
        return f"{c.mean:.{DISPLAY}f}"
    return f"{c.mean:.{DISPLAY}f} ± {c.std:.{DISPLAY}f}"


def delta_text(c: Cell) -> str:
    """"+0.0011 [+0.0003, +0.0019] (+0.5 %)": the CI only with 2+ pairs, RelaImpr for AUCs."""
    point, ci = delta_parts(c)
    if not ci:
        return point
    head, _, rel = point.partition(" (")
    return f"{head} {ci}" + (f" ({rel}" if rel else "")


def delta_parts(c: Cell) -> tuple[str, str]:
    """("+0.0011 (+0.5 %)", "[+0.0003, +0.0019]"): the delta with RelaImpr, and the CI ("" with
    fewer than 2 pairs); two lines in LaTeX, where one would make the table too wide."""
    if c.n_pairs == 0:
        return "no paired seeds", ""
    point = signed(c.delta, DISPLAY)
    if not np.isnan(c.relaimpr):
        point += f" ({signed(c.relaimpr, 1)} %)"
    ci = "" if np.isnan(c.lo) else f"[{bound(c.lo, DISPLAY)}, {bound(c.hi, DISPLAY)}]"
    return point, ci


def signed(x: float, decimals: int) -> str:
    """"+0.0011", "-0.0003"; a value that rounds to zero has no sign ("0.0000"), since its
    sign is below the shown precision."""
    if round(x, decimals) == 0:
        return f"{0:.{decimals}f}"
    return f"{x:+.{decimals}f}"


def bound(x: float, decimals: int) -> str:
    """A CI bound keeps its sign even when it rounds to zero ("+0.0000"): whether the interval
    excludes 0 must stay readable."""
    return f"{0:.{decimals}f}" if x == 0 else f"{x:+.{decimals}f}"


def marker(c: Cell) -> str:
    """"↑*" significantly better, "↓*" significantly worse, "≈" equivalent (within the
    margin), "n.s." not significant, or why no test ran."""
    if c.outcome == "win":
        return "↑*"
    if c.outcome == "loss":
        return "↓*"
    if c.outcome == "equivalent":
        return "≈"
    if c.outcome == "untested":
        return f"no test ({c.n_pairs} seed{'s' if c.n_pairs != 1 else ''})"
    return "n.s." if c.outcome == "n.s." else ""


def paper_marker(c: Cell, tested: bool = True) -> str:
    """The paper layout's marker: "↑*" / "↓*" significant, "≈" equivalent, "†" untested in a
    table where other cells were tested (`tested`), none for not significant (the caption
    says so)."""
    marks = {"win": "↑*", "loss": "↓*", "equivalent": "≈", "untested": "†" if tested else ""}
    return marks.get(c.outcome, "")


def paper_parts(c: Cell, cells: str) -> tuple[str, str]:
    """A paper-layout cell as (mean, what goes beside or under it): ("0.7234", "± 0.0012"),
    ("0.7250", "Δ [+0.0003, +0.0019]") or (mean, "") as `cells` asks; no std with one seed,
    no CI for the baseline or with fewer than 2 pairs."""
    mean = f"{c.mean:.{DISPLAY}f}"
    if cells == "std" and not np.isnan(c.std):
        return mean, f"± {c.std:.{DISPLAY}f}"
    if cells == "ci" and c.outcome and not np.isnan(c.lo):
        return mean, f"Δ [{bound(c.lo, DISPLAY)}, {bound(c.hi, DISPLAY)}]"
    return mean, ""


def metric_short(metric: str) -> str:
    """A column head under its data set: "CTR" for CTR AUC in the AUC table (the caption names
    the metric kind)."""
    name = display_name(metric)
    for suffix in (" AUC", " logloss"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def wtl_text(wins: int, ns: int, losses: int, equivalent: int = 0, untested: int = 0) -> str:
    text = f"{wins} / {ns} / {losses}"
    extra = [f"{equivalent} equivalent"] if equivalent else []
    extra += [f"{untested} untested"] if untested else []
    return text + (f" ({', '.join(extra)})" if extra else "")


def wtl_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """The wins / n.s. / losses summary as header + rows of text: one row per arm, one column
    per metric and a total."""
    arms = list(dict.fromkeys(r[0] for r in table.wtl))
    headers = ["Loss"] + list(table.columns) + ["Total"]
    rows = []
    for arm in arms:
        mine = {r[1]: r[2:] for r in table.wtl if r[0] == arm}
        total = np.sum([mine[m] for m in table.metrics if m in mine], axis=0).astype(int)
        rows.append([arm_name(arm)] + [wtl_text(*mine[m]) if m in mine else "" for m in
                                       table.metrics] + [wtl_text(*total)])
    return headers, rows


def wtl_caption(table: Table) -> str:
    base = loss_name(table.baseline)
    text = (f"Wins / n.s. / losses against {base} over data sets and models: significantly "
            f"better / not significant / significantly worse (the test and correction of the "
            f"table above).")
    if table.equivalence:
        shown = ", ".join(f"±{v:g} ({k.replace('auc', 'AUC')})"
                          for k, v in table.equivalence.items())
        text += (f" Equivalent: not significant, and within {shown} by the equivalence test "
                 "(counted in n.s. too).")
    else:
        text += (" n.s. does not mean equal: no equivalence test was run for this table's "
                 "metrics (--equivalence, a margin per metric kind).")
    return text
