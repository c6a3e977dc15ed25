"""The sweep of a generator knob over variants of the synthetic data set: the frame drawn from
a report's cells, and the plot."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from _reference import overlapping_texts, pdf_width_in

from prlbench.report.sweep import COLUMNS, knob_label, sweep_figure, sweep_frame, sweep_plot

METRICS = ("ctr_auc", "ctcvr_auc", "ctr_auc_noise_free", "cvr_auc")


def _cells(datasets, models=("mmoe",), arms=("bce", "pwiser", "ranknet"), nan_ci=False):
    """A cells frame as summarise() builds it: the baseline's rows without a delta."""
    rows = []
    for i, (ds, model, metric, arm) in enumerate(itertools.product(datasets, models, METRICS,
                                                                   arms)):
        base = arm == "bce"
        d = math.nan if base else 0.001 * (i % 7) - 0.002
        lo, hi = (math.nan, math.nan) if base or nan_ci else (d - 0.001, d + 0.0015)
        rows.append({"dataset": ds, "model": model, "metric": metric, "arm": arm, "loss": arm,
                     "is_baseline": base, "n": 4, "mean": 0.7, "n_pairs": math.nan if base else 4,
                     "delta_mean": d, "delta_lo": lo, "delta_hi": hi,
                     "significant": math.nan if base else bool(i % 2),
                     "outcome": math.nan if base else ("win" if i % 2 else "tie")})
    return pd.DataFrame(rows)


SWEEP = ["synthetic[noise=0.5]", "synthetic", "synthetic[noise=0.1]"]


def test_the_frame_puts_the_plain_data_set_at_the_defaults_and_sorts_by_value():
    frame, warnings = sweep_frame(_cells(SWEEP + ["aliccp"]))
    assert warnings == []
    assert list(frame.columns[:len(COLUMNS)]) == COLUMNS
    assert set(frame["base"]) == {"synthetic"} and set(frame["knob"]) == {"noise_rate"}
    assert set(frame["arm"]) == {"pwiser", "ranknet"}  # the baseline has no delta
    assert list(dict.fromkeys(frame["value"])) == [0.1, 0.3, 0.5]
    assert list(dict.fromkeys(frame["dataset"])) == ["synthetic[noise=0.1]", "synthetic",
                                                     "synthetic[noise=0.5]"]
    assert len(frame) == 3 * len(METRICS) * 2
    cells = _cells(SWEEP)
    one = frame[(frame["dataset"] == "synthetic") & (frame["metric"] == "ctr_auc")
                & (frame["arm"] == "pwiser")]
    src = cells[(cells["dataset"] == "synthetic") & (cells["metric"] == "ctr_auc")
                & (cells["arm"] == "pwiser")]
    assert one["delta_mean"].tolist() == src["delta_mean"].tolist()


def test_several_varying_knobs_give_a_warning_and_no_rows():
    frame, warnings = sweep_frame(_cells(SWEEP + ["synthetic[click=0.02]"]))
    assert frame.empty and list(frame.columns[:len(COLUMNS)]) == COLUMNS
    assert len(warnings) == 1 and "differ in click and noise" in warnings[0]


@pytest.mark.parametrize("datasets", [["synthetic"], ["synthetic[noise=0.5]", "aliccp"],
                                      ["synthetic", "synthetic[noise=0.3]"], ["nope", "x[y=1]"]])
def test_no_sweep_without_two_distinct_variants(datasets):
    frame, warnings = sweep_frame(_cells(datasets))
    assert frame.empty and warnings == []


def test_a_variant_spelling_out_the_defaults_replaces_the_plain_name():
    frame, _ = sweep_frame(_cells(["synthetic", "synthetic[noise=0.3]", "synthetic[noise=0.6]"]))
    assert list(dict.fromkeys(frame["dataset"])) == ["synthetic[noise=0.3]",
                                                     "synthetic[noise=0.6]"]


def test_rows_sweep_reads_the_knob_as_a_number():
    frame, _ = sweep_frame(_cells(["synthetic[rows=50000]", "synthetic[rows=5000]"]))
    assert set(frame["knob"]) == {"rows"}
    assert list(dict.fromkeys(frame["value"])) == [5000.0, 50000.0]


def test_the_plot_writes_png_and_pdf_with_a_panel_per_metric(tmp_path):
    frame, _ = sweep_frame(_cells(SWEEP, models=("mmoe", "ple")))
    fig = sweep_figure(frame)  # what sweep_plot saves
    import matplotlib.pyplot as plt  # after prlbench chose the Agg backend
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 2 * 3  # two models x ctr, ctcvr, noise-free (cvr_auc is not drawn)
    ax = axes[0]
    assert "CTR AUC" in ax.get_title() and "BCE" in ax.get_title()
    assert ax.get_xlabel() == knob_label("noise_rate") == \
        "noise clicks / all clicks (--noise-rate)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.3", "0.5"]
    assert any(np.allclose(line.get_ydata(), 0) for line in ax.get_lines())  # the zero line
    plt.close(fig)
    one, _ = sweep_frame(_cells(SWEEP))
    paths = sweep_plot(one, tmp_path / "sweep")
    assert [p.name for p in paths] == ["sweep.png", "sweep.pdf", "sweep-wide.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    # for papers: one column (3.3 in) and the full width (7 in), text at the body size
    assert [pdf_width_in(p) for p in paths[1:]] == [3.3, 7.0]
    from prlbench.report.plots import PAPER_RC

    with plt.rc_context(PAPER_RC):
        for width in ("column", "wide"):
            fig = sweep_figure(frame, width=width)
            assert overlapping_texts(fig) == []
            assert {t.get_fontsize() for ax in fig.axes for t in (ax.title, ax.xaxis.label)} \
                == {10.0}
            plt.close(fig)


@pytest.mark.parametrize("case", ["single_value", "nan_ci", "empty"])
def test_the_plot_does_not_fail_on_degenerate_frames(tmp_path, case):
    if case == "empty":
        frame = pd.DataFrame(columns=COLUMNS)
    else:
        frame, _ = sweep_frame(_cells(SWEEP, nan_ci=case == "nan_ci"))
        if case == "single_value":
            frame = frame[frame["value"] == 0.3]
    paths = sweep_plot(frame, tmp_path / f"s.{case}")
    assert [p.name for p in paths] == [f"s.{case}.png", f"s.{case}.pdf", f"s-wide.{case}.pdf"]
    assert all(p.exists() for p in paths)
