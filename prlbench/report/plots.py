"""Plots (matplotlib, Agg backend). The forest and sweep plots are written three times
(`save_for_papers`): `stem.png` for screens, `stem.pdf` one column wide (3.3 in) and
`stem-wide.pdf` across the page (7 in), the PDFs with text at a 10 pt paper's body size and
the tables' labels; the validation curves as PNG and PDF of one size:

- `forest_plot`: the delta AUC of every arm against the baseline, one row per (data set, model),
  one panel per AUC metric, 95 % bootstrap CI bars, a zero line; significant deltas filled.
- `validation_curves`: validation CTR and CTCVR AUC per epoch, mean over seeds with a +-1 std
  band, one line per arm, one panel pair per (data set, model), in a grid of up to 4 columns.

Figure sizes grow with the number of rows; constrained layout keeps labels apart (the tests
check that no drawn texts overlap).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd

from prlbench.store import RunFolder
from prlbench.fileio import atomic_write_bytes
from prlbench.config import BASELINE
from prlbench.metrics import display_name, select, table_metrics
from prlbench.report import table as tm
from prlbench.report.analysis import Summary

# The validation AUCs of history.json, one panel each: (column, axis label).
VAL_METRICS = tuple((m.name, m.display_name) for m in select(split="val", kind="auc"))
MAX_COLS = 4
# Paper sizes: one column, and the full text width, of the usual two-column formats (inches).
PAPER_WIDTH_IN = {"column": 3.3, "wide": 7.0}
# Text at a 10 pt paper's body size (ticks and legend one point smaller), in a serif face.
PAPER_RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
            "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9,
            "legend.title_fontsize": 9, "figure.titlesize": 10, "font.family": "serif",
            "mathtext.fontset": "cm", "pdf.fonttype": 42}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window (and safe in worker processes)
    import matplotlib.pyplot as plt

    return plt


def _styles(arms: list[str], baseline: str) -> dict[str, dict]:
    """One colour and marker per arm, the same in every plot: the baseline dark grey, the
    others in name order (so an arm keeps its colour whether or not the baseline is drawn)."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
              "#e377c2", "#bcbd22"]
    markers = ["s", "^", "D", "v", "P", "X", "<", ">", "*"]
    others = [a for a in sorted(arms) if a != baseline]
    out = {a: {"color": c, "marker": m} for a, c, m in zip(others, itertools.cycle(colors),
                                                           itertools.cycle(markers))}
    out[baseline] = {"color": "0.25", "marker": "o"}
    return out


def save(fig, path_stem: Path, exts: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """PNG (150 dpi) and PDF next to each other (those of `exts`), atomically; closes the
    figure."""
    import io

    plt = _plt()
    fig.canvas.draw()  # lay out once, then freeze: the PNG and the PDF share one layout
    fig.set_layout_engine("none")
    paths = []
    for ext, kw in (("png", {"dpi": 150}), ("pdf", {})):
        if ext not in exts:
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, **kw)
        path = Path(path_stem).with_name(f"{Path(path_stem).name}.{ext}")  # keeps "forest.x"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def save_for_papers(make_figure, path_stem: Path) -> list[Path]:
    """`stem.png` of make_figure(None) (for screens), `stem.pdf` of make_figure("column") and
    `stem-wide.pdf` of make_figure("wide"), the two drawn with PAPER_RC (10 pt text). A split's
    suffix stays last: forest.test_random -> forest-wide.test_random.pdf."""
    plt = _plt()
    stem = Path(path_stem)
    head, dot, rest = stem.name.partition(".")
    paths = save(make_figure(None), stem, exts=("png",))
    with plt.rc_context(PAPER_RC):
        paths += save(make_figure("column"), stem, exts=("pdf",))
        paths += save(make_figure("wide"), stem.with_name(f"{head}-wide{dot}{rest}"),
                      exts=("pdf",))
    return paths


def paper_size(width: str, height: float) -> tuple[float, float]:
    """(width, height) in inches of a paper figure: `width` "column" or "wide"."""
    return PAPER_WIDTH_IN[width], height


def wrap(text: str, width: str | None, share: float = 1.0) -> str:
    """A label wrapped to `share` of the paper figure's width (10 pt: about 11 characters an
    inch); as it is for a screen figure (`width` None)."""
    import textwrap

    if width is None:
        return text
    chars = max(12, int(PAPER_WIDTH_IN[width] * share * 11))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


# ------------------------------------------------------------------------------ forest
def forest_plot(summary: Summary, path_stem: Path) -> list[Path]:
    return save_for_papers(lambda width: forest_figure(summary, width=width), path_stem)


def forest_figure(summary: Summary, *, width: str | None = None):
    """The forest plot; `width` None: sized for a screen, "column" (3.3 in: the metrics'
    panels stacked) or "wide" (7 in: side by side), for papers."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    cells = summary.cells[~summary.cells["is_baseline"]]
    metrics = ([m for m in table_metrics("auc") if m in set(cells["metric"])]
               or list(summary.metrics[:1]))
    groups = list(dict.fromkeys(zip(cells["dataset"], cells["model"])))
    arms = sorted(cells["arm"].unique())
    styles = _styles(arms, summary.baseline)
    # a paper's narrow figure: long names (a variant's knobs) wrapped to under half its width,
    # each row as tall as its label
    labels = [wrap(f"{tm.dataset_name(d)} · {tm.model_name(m)}", width,
                   0.4 if width == "column" else 0.2) for d, m in groups]
    lines = max([label.count("\n") + 1 for label in labels] or [1])
    if width is None:
        rows_h = 0.28 * len(groups) * max(1, len(arms))
        shape, size = (1, len(metrics)), (2.2 + 3.2 * len(metrics), 1.5 + rows_h)
    else:
        rows_h = len(groups) * max(0.2 * max(1, len(arms)), 0.17 * lines)
        shape = (len(metrics), 1) if width == "column" else (1, len(metrics))
        size = paper_size(width, 1.3 + len(metrics) * (0.55 + rows_h) if width == "column"
                          else 1.5 + rows_h)
    fig, axes = plt.subplots(*shape, sharey=True, squeeze=False, layout="constrained",
                             figsize=size)
    step = 0.7 / max(1, len(arms))  # arms spread over 70 % of a row's height
    for ax, metric in zip(axes.flat, metrics):
        sub = cells[cells["metric"] == metric]
        for j, arm in enumerate(arms):
            _forest_points(ax, sub[sub["arm"] == arm], groups, styles[arm],
                           (j - (len(arms) - 1) / 2) * step)
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--", zorder=0)
        _dataset_separators(ax, groups)
        ax.set_title(f"Δ {display_name(metric)}")
        ax.grid(axis="x", color="0.9", lw=0.6)
        # few, level labels: no overlap (fewer on a paper's narrow panels)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4 if width is None else 3))
    ax0 = axes[0][0]
    ax0.set_yticks(range(len(groups)), labels)
    ax0.set_ylim(max(len(groups), 1) - 0.5, -0.5)  # first group on top (an empty plot: one row)
    fig.supxlabel(wrap(_forest_xlabel(summary), width), fontsize="medium")
    fig.legend(handles=_forest_legend(arms, styles), loc="outside upper center",
               ncols=min(len(arms) + 2, 2 if width == "column" else 5), frameon=False)
    return fig


def _forest_points(ax, sub: pd.DataFrame, groups: list, style: dict, offset: float) -> None:
    color = style["color"]
    index = {g: i for i, g in enumerate(groups)}
    y = np.array([index[g] for g in zip(sub["dataset"], sub["model"])], dtype=float) + offset
    d, lo, hi = (sub[c].to_numpy(float) for c in ("delta_mean", "delta_lo", "delta_hi"))
    has_ci = ~np.isnan(lo)
    ax.errorbar(d[has_ci], y[has_ci], xerr=[d[has_ci] - lo[has_ci], hi[has_ci] - d[has_ci]],
                fmt="none", ecolor=color, elinewidth=1.2, capsize=2.5)
    sig = sub["significant"].to_numpy(bool)
    ax.scatter(d[sig], y[sig], color=color, marker=style["marker"], s=30, zorder=3)
    ax.scatter(d[~sig], y[~sig], facecolor="white", edgecolor=color, marker=style["marker"],
               s=30, zorder=3)


def _dataset_separators(ax, groups: list) -> None:
    for i in range(1, len(groups)):
        if groups[i][0] != groups[i - 1][0]:
            ax.axhline(i - 0.5, color="0.6", lw=0.8)


def _forest_xlabel(summary: Summary) -> str:
    base = tm.loss_name(summary.baseline)
    conf = f"{(1 - summary.alpha) * 100:g} %"
    if summary.cells["is_baseline"].all():
        return f"only {base} was run: no difference to show"
    if summary.n_seeds < 2:
        return (f"AUC difference to {base}, seed {tm.seed_list(summary.seeds)}: one seed, "
                "no CI and no test")
    ci = f"{conf} {tm.ci_name(summary)}"
    if summary.n_comparisons == 0:
        return (f"AUC difference to {base} (mean over {summary.n_seeds} seeds, {ci}); no test "
                "could be computed")
    test = tm.TEST_NAMES[summary.test]
    return (f"AUC difference to {base} (mean over {summary.n_seeds} seeds, {ci});\n"
            f"filled: {test} significant after {tm.CORRECTION_NAMES[summary.correction]}")


def _forest_legend(arms: list[str], styles: dict) -> list:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], label=tm.arm_name(a), **styles[a]) for a in arms]
    handles += [Line2D([], [], ls="none", marker="o", color="0.3", label="significant"),
                Line2D([], [], ls="none", marker="o", markerfacecolor="white", color="0.3",
                       label="not significant")]
    return handles


# ------------------------------------------------------------------- validation curves
def validation_curves(runs: pd.DataFrame, path_stem: Path, *, baseline: str = BASELINE
                      ) -> list[Path]:
    return save(validation_figure(runs, baseline=baseline), path_stem)


def validation_figure(runs: pd.DataFrame, *, baseline: str = BASELINE):
    plt = _plt()
    hist = _histories(runs)
    groups = list(dict.fromkeys(zip(runs["dataset"], runs["model"])))
    arms = sorted(runs["arm"].unique(), key=lambda a: (a != baseline, a))
    styles = _styles(arms, baseline)
    ncols = min(MAX_COLS, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = plt.figure(layout="constrained", figsize=(0.6 + 3.4 * ncols, 0.8 + 4.0 * nrows))
    subfigs = fig.subfigures(nrows, ncols, squeeze=False)
    for sf, (dataset, model) in zip(subfigs.flat, groups):
        sf.suptitle(f"{tm.dataset_name(dataset)} · {tm.model_name(model)}", fontsize="medium")
        axes = sf.subplots(len(VAL_METRICS), 1, sharex=True)
        mine = hist[(hist["dataset"] == dataset) & (hist["model"] == model)]
        for ax, (col, label) in zip(np.atleast_1d(axes), VAL_METRICS):
            for arm in arms:
                _curve(ax, mine[mine["arm"] == arm], col, styles[arm])
            ax.set_ylabel(label)
            ax.grid(color="0.92", lw=0.6)
        np.atleast_1d(axes)[-1].set_xlabel("epoch")
        _epoch_ticks(np.atleast_1d(axes)[-1], mine["epoch"])
    handles = [plt.Line2D([], [], label=tm.arm_name(a), **styles[a]) for a in arms]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(arms), 6),
               frameon=False,
               title="mean ± 1 std over the seeds\nstill training at each epoch")
    return fig


def _histories(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, epoch) with the validation AUCs (runs without history.json skipped)."""
    frames = []
    for r in runs.itertuples():
        folder = RunFolder(r.run_dir)
        if folder.has(RunFolder.HISTORY):
            h = pd.DataFrame([vars(e) for e in folder.read_history()])
            frames.append(h.assign(dataset=r.dataset, model=r.model, arm=r.arm, seed=r.seed))
    cols = ["dataset", "model", "arm", "seed", "epoch"] + [c for c, _ in VAL_METRICS]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True).reindex(columns=cols)


def _epoch_ticks(ax, epochs: pd.Series) -> None:
    """Whole epochs only: each epoch its tick when there are few, else whole-number ticks."""
    from matplotlib.ticker import MaxNLocator

    seen = sorted(int(e) for e in epochs.dropna().unique())
    if 0 < len(seen) <= 12:
        ax.set_xticks(seen)
        if len(seen) == 1:  # one point: a sensible width around it
            ax.set_xlim(seen[0] - 1, seen[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curve(ax, h: pd.DataFrame, col: str, style: dict) -> None:
    if h.empty or h[col].isna().all():
        return
    # Early stopping ends seeds at different epochs: each epoch averages the seeds that got there.
    g = h.groupby("epoch")[col].agg(["mean", "std"]).sort_index()
    x = g.index.to_numpy(float)
    ax.plot(x, g["mean"], lw=1.5, ms=4, **style)
    std = g["std"].fillna(0.0).to_numpy()
    if len(x) == 1:  # a band needs two epochs: show the spread as an error bar
        ax.errorbar(x, g["mean"], yerr=std, color=style["color"], capsize=3, lw=1, fmt="none")
        return
    ax.fill_between(x, g["mean"] - std, g["mean"] + std, color=style["color"], alpha=0.15, lw=0)
