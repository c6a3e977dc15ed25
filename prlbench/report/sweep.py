"""A generator knob swept over variants of a generated data set (`synthetic[noise=0.1]`,
`synthetic[noise=0.3]`, ...): each arm's Δ AUC against the baseline as a function of the knob.

- `sweep_frame(cells)`: the report's cells frame -> one row per (variant, model, metric, arm)
  of every data set whose variants differ in exactly one knob, with the knob's value.
- `sweep_plot(frame, stem)`: `stem.png` (screens), `stem.pdf` (one column) and
  `stem-wide.pdf` (full width; plots.save_for_papers), one panel per AUC metric (columns; in
  one column, stacked) and per (data set, knob, model) (rows), x = the knob's value, y = Δ
  with its CI as error bars, one line per arm, a zero line.

The plain data set (`synthetic`) counts as the generator's defaults (preprocess_synthetic's
signature); a variant that spells the defaults out takes its place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prlbench.config import BASELINE
from prlbench.data import variants
from prlbench.errors import PrlbenchError
from prlbench.metrics import display_name
from prlbench.report import table as tm
from prlbench.report.plots import _plt, _styles, paper_size, save_for_papers, wrap

# The panels, in this order, those present in the frame.
SWEEP_METRICS = ("ctr_auc", "ctcvr_auc", "ctr_auc_noise_free")
COLUMNS = ["base", "knob", "value", "dataset", "model", "metric", "arm", "delta_mean",
           "delta_lo", "delta_hi", "outcome"]


def sweep_frame(cells: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows (COLUMNS, plus `significant` where the cells have it) of every base data set with
    at least two variants that differ in exactly one knob, sorted by base, knob, value; and a
    warning for each base whose variants differ in several knobs (no rows for it)."""
    warnings: list[str] = []
    extra = [c for c in ("significant",) if c in cells.columns]
    empty = pd.DataFrame(columns=COLUMNS + extra)
    if cells.empty:
        return empty, warnings
    bases: dict[str, dict[str, dict]] = {}  # base -> dataset id -> its generator params
    for ds in dict.fromkeys(cells["dataset"]):
        try:
            base = variants.base_name(ds)
            if not variants.spec_of(ds).generated:
                continue
            bases.setdefault(base, {})[ds] = variants.params(ds)
        except PrlbenchError:  # not a data set id this prlbench knows: not a sweep
            continue
    frames = []
    for base, found in bases.items():
        found = _drop_plain_duplicate(base, found)
        if len(found) < 2:
            continue
        varying = [k for k in variants.KNOBS
                   if len({p.get(k) for p in found.values()}) > 1]
        if len(varying) != 1:
            if varying:
                warnings.append(
                    f"{base}: the variants {', '.join(found)} differ in "
                    f"{' and '.join(variants.KNOBS[k].short for k in varying)}, not in one knob "
                    "alone: no sweep plot (run one knob's values at a time)")
            continue
        knob = varying[0]
        value = {ds: float(p[knob]) for ds, p in found.items()}
        sub = cells[cells["dataset"].isin(list(found)) & ~cells["is_baseline"].astype(bool)]
        sub = sub.assign(base=base, knob=knob, value=sub["dataset"].map(value))
        frames.append(sub[COLUMNS + extra])
    if not frames:
        return empty, warnings
    out = pd.concat(frames, ignore_index=True)
    out = out.sort_values(["base", "knob", "value", "model", "metric", "arm"], kind="stable")
    return out.reset_index(drop=True), warnings


def _drop_plain_duplicate(base: str, found: dict[str, dict]) -> dict[str, dict]:
    """The plain name stands for the defaults; a variant with the same parameters (one that
    spells the defaults out) is the better-defined of the two and is kept instead."""
    if base in found and any(ds != base and p == found[base] for ds, p in found.items()):
        return {ds: p for ds, p in found.items() if ds != base}
    return found


def knob_label(knob: str) -> str:
    """An axis label: "noise clicks / all clicks (--noise-rate)"."""
    k = variants.KNOBS.get(knob)
    return f"{k.meaning} ({k.flag})" if k else knob


def sweep_plot(frame: pd.DataFrame, stem: Path, *, baseline: str = BASELINE,
               confidence: float = 0.95, ci: str = "bootstrap CI") -> list[Path]:
    """Write `stem.png`, `stem.pdf` and `stem-wide.pdf` (see the module doc); an empty frame
    draws one empty panel that says so. `confidence`: the level of the cells' CIs, for the
    legend."""
    return save_for_papers(lambda width: sweep_figure(
        frame, baseline=baseline, confidence=confidence, ci=ci, width=width), stem)


def sweep_figure(frame: pd.DataFrame, *, baseline: str = BASELINE, confidence: float = 0.95,
                 ci: str = "bootstrap CI", width: str | None = None):
    """The sweep plot; `width` None: sized for a screen, "column" (3.3 in, the metrics'
    panels stacked) or "wide" (7 in), for papers."""
    plt = _plt()
    metrics = [m for m in SWEEP_METRICS if m in set(frame["metric"])] if len(frame) else []
    if len(frame) and not metrics:
        metrics = list(dict.fromkeys(frame["metric"]))[:3]
    rows = list(dict.fromkeys(zip(frame["base"], frame["knob"], frame["model"]))) \
        if len(frame) else []
    arms = sorted(frame["arm"].unique()) if len(frame) else []
    styles = _styles(arms, baseline)
    ncols, nrows = max(1, len(metrics)), max(1, len(rows))
    if width == "column":  # one panel per row: metrics stacked under each other
        size = paper_size(width, 1.4 + 2.1 * ncols * nrows)
        fig, flat = plt.subplots(ncols * nrows, 1, squeeze=False, layout="constrained",
                                 figsize=size)
        axes = flat.reshape(nrows, ncols)
    else:
        size = (1.0 + 3.6 * ncols, 1.2 + 2.9 * nrows) if width is None else \
            paper_size(width, 1.3 + 2.3 * nrows)
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                 figsize=size)
    if not rows:
        ax = axes[0][0]
        ax.text(0.5, 0.5, "no data set varied in one knob alone: nothing to plot",
                ha="center", va="center", transform=ax.transAxes, fontsize="small")
        ax.set_axis_off()
        return fig
    for r, (base, knob, model) in enumerate(rows):
        mine = frame[(frame["base"] == base) & (frame["knob"] == knob) & (frame["model"] == model)]
        values = np.sort(mine["value"].astype(float).unique())
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            sub = mine[mine["metric"] == metric]
            for arm in arms:
                _line(ax, sub[sub["arm"] == arm], styles[arm])
            ax.axhline(0.0, color="0.3", lw=0.8, ls="--", zorder=0)
            ax.grid(color="0.92", lw=0.6)
            _x_axis(ax, values, knob)
            share = 0.9 if width == "column" else 0.8 / ncols  # less the axis labels
            ax.set_title(wrap(f"{variants.display_name(base)} · {tm.model_name(model)}\n"
                              f"Δ {display_name(metric)} vs {tm.loss_name(baseline)}",
                              width, share), fontsize="medium")
            if c == 0 or width == "column":
                ax.set_ylabel(f"Δ AUC vs {tm.loss_name(baseline)}")
            ax.set_xlabel(wrap(knob_label(knob), width, share))
    handles = [plt.Line2D([], [], label=tm.arm_name(a), **styles[a]) for a in arms]
    handles += [plt.Line2D([], [], ls="none", marker="o", color="0.3", label="significant"),
                plt.Line2D([], [], ls="none", marker="o", markerfacecolor="white", color="0.3",
                           label="not significant")] if "significant" in frame else []
    fig.legend(handles=handles, loc="outside upper center",
               ncols=min(len(handles), 2 if width == "column" else 5), frameon=False,
               title=wrap(f"mean Δ over the paired seeds, bars: {confidence * 100:g} % {ci}",
                          width))
    return fig


def _line(ax, sub: pd.DataFrame, style: dict) -> None:
    if sub.empty:
        return
    sub = sub.sort_values("value")
    x = sub["value"].to_numpy(float)
    d, lo, hi = (sub[c].to_numpy(float) for c in ("delta_mean", "delta_lo", "delta_hi"))
    color = style["color"]
    ok = ~np.isnan(d)
    ax.plot(x[ok], d[ok], color=color, lw=1.4, zorder=2)
    ci = ok & ~np.isnan(lo) & ~np.isnan(hi)
    if ci.any():
        below, above = np.clip(d[ci] - lo[ci], 0, None), np.clip(hi[ci] - d[ci], 0, None)
        ax.errorbar(x[ci], d[ci], yerr=[below, above], fmt="none",
                    ecolor=color, elinewidth=1.1, capsize=3, zorder=2)
    sig = (sub["significant"].map(lambda v: v is True or v is np.True_ or str(v) == "True")
           .to_numpy(bool) if "significant" in sub else np.ones(len(sub), bool))
    ax.scatter(x[ok & sig], d[ok & sig], color=color, marker=style["marker"], s=28, zorder=3)
    ax.scatter(x[ok & ~sig], d[ok & ~sig], facecolor="white", edgecolor=color,
               marker=style["marker"], s=28, zorder=3)


def _x_axis(ax, values: np.ndarray, knob: str) -> None:
    """The swept values as ticks (when few); a log axis for rows spanning 10x or more; a
    sensible width around a single value."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return
    lo, hi = float(values.min()), float(values.max())
    if knob == "rows" and lo > 0 and hi / lo >= 10:
        ax.set_xscale("log")
    if len(values) <= 8:
        ax.set_xticks(values, [variants.fmt(int(v) if variants.KNOBS.get(knob) and
                                            variants.KNOBS[knob].integer else float(v))
                               for v in values])
        ax.minorticks_off()
    if lo == hi:  # one value: half its size either side (0: +-0.5)
        pad = abs(lo) * 0.5 or 0.5
        ax.set_xlim(lo - pad, hi + pad)
