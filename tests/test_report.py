"""The reporting layer: run folders -> statistics -> tables (Markdown, LaTeX, CSV) and plots.

The statistics are checked against an independent recomputation (numpy / scipy directly, Holm
by a hand loop, DeLong by the textbook O(m n) form); the renderers against golden files that were
generated once and reviewed by hand (PRLBENCH_UPDATE_GOLDEN=1 regenerates them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as sps

from prlbench.errors import DataError
from prlbench.report import analysis, build_table, to_csv, to_latex, to_markdown, write_report
from prlbench.report import plots

from _reference import delong_slow, overlapping_texts, pdf_width_in

GOLDEN = Path(__file__).parent / "golden"
DATASETS, MODELS, LOSSES, SEEDS = ("synthetic", "aliexpress_nl"), ("mmoe", "ple"), \
    ("bce", "pwiser", "ranknet"), tuple(range(1, 7))
PARAMS = {"bce": {}, "pwiser": {"lam": 0.5, "m1": 0.05, "m2": 0.1, "phi": "squared_hinge",
                               "score": "prob", "head": "ctr"},
          "ranknet": {"lam": 0.5, "score": "logit"}}
EFFECT = 0.004  # pwiser on mmoe: +0.004 on every AUC, -0.004 on every logloss; zero elsewhere
ROWS = 2000


# ------------------------------------------------------------------ a fake results tree
def _labels(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The test split's labels: one per data set, shared by all its runs (row-aligned)."""
    rng = np.random.default_rng(len(dataset))
    click = (rng.random(ROWS) < 0.25).astype(np.int8)
    conversion = (click & (rng.random(ROWS) < 0.3)).astype(np.int8)
    return click, conversion


def _write_run(root: Path, dataset: str, model: str, loss: str, seed: int, rng,
               params: dict | None = None, epochs: int = 3) -> Path:
    params = PARAMS[loss] if params is None else params
    tag = "-".join(f"{k}{v}" for k, v in sorted(params.items()) if k == "lam")
    d = root / "runs" / f"{dataset}-{model}-{loss}{tag}-s{seed}"
    d.mkdir(parents=True)
    seed_shift = 0.003 * np.sin(seed + len(model))  # shared by the arms of one seed: pairing
    gain = EFFECT if (loss == "pwiser" and model == "mmoe") else 0.0
    base = 0.72 + (0.01 if model == "ple" else 0.0) + seed_shift
    metrics = {}
    for i, task in enumerate(("ctr", "ctcvr", "cvr")):
        metrics[f"{task}_auc"] = base + 0.05 * i + gain + rng.normal(0, 0.0005)
        metrics[f"{task}_logloss"] = 0.4 - 0.1 * i - gain + rng.normal(0, 0.0005)
    metrics.update(rows=ROWS, seconds=1.5)
    cfg = {"data": {"dataset": dataset}, "model": {"name": model, "preset": "small",
                                                   "overrides": {}},
           "loss": {"name": loss, "params": params}, "train": {"seed": seed, "epochs": epochs}}
    wobble = rng.normal(0, 0.001, size=(epochs, 2))
    history = [{"epoch": e + 1, "train_loss": 0.5 / (e + 1),
                "val_ctr_auc": base - 0.02 / (e + 1) + gain + wobble[e, 0],
                "val_ctcvr_auc": base + 0.05 - 0.03 / (e + 1) + gain + wobble[e, 1],
                "val_score": base} for e in range(epochs)]
    for name, obj in (("config.json", cfg), ("metrics.json", metrics), ("history.json", history),
                      ("run.json", {"status": "done", "run_id": d.name, "best_epoch": epochs})):
        (d / name).write_text(json.dumps(obj))
    click, conversion = _labels(dataset)
    strength = 1.0 + (0.6 if gain else 0.0)  # the gain shows in the predictions, too
    noise = rng.normal(size=(3, ROWS))
    p = {f"p_{t}": 1 / (1 + np.exp(-(strength * y + noise[i] - 1.5)))
         for i, (t, y) in enumerate((("ctr", click), ("ctcvr", conversion), ("cvr", conversion)))}
    pq.write_table(pa.table({"row": np.arange(ROWS), "search_id": np.arange(ROWS) // 10,
                             "click": click, "conversion": conversion, **p}),
                   d / "predictions.parquet")
    return d


def make_tree(root: Path, seeds=SEEDS, datasets=DATASETS, models=MODELS, losses=LOSSES
              ) -> list[Path]:
    rng = np.random.default_rng(0)
    # Runs of different seeds stop at different epochs (early stopping), as real runs do.
    return [_write_run(root, ds, m, loss, s, rng, epochs=3 + s % 3) for ds in datasets
            for m in models for loss in losses for s in seeds]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> list[Path]:
    return make_tree(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def runs(tree) -> pd.DataFrame:
    return analysis.load_runs(tree)


# The tree's metrics.json numbers are typed in (EFFECT) and its predictions drawn apart from them,
# so the predictions do not reproduce them: the two-level bootstrap, which reads the predictions,
# is tested on consistent runs in test_twolevel_report.py (and refuses this tree: below).
@pytest.fixture(scope="module")
def summary_t(runs) -> analysis.Summary:
    return analysis.summarise(runs, test="ttest", n_boot=2000, two_level=False)


@pytest.fixture(scope="module")
def summary_w(runs) -> analysis.Summary:
    return analysis.summarise(runs, n_boot=2000, two_level=False, test="wilcoxon")  # + Holm


def test_predictions_that_do_not_reproduce_the_metrics_get_no_two_level_ci(runs):
    first = runs[(runs.dataset == "synthetic") & (runs.model == "mmoe")]
    s = analysis.summarise(first, n_boot=200, delong=False)
    c = s.cells[~s.cells["is_baseline"]]
    assert set(c["ci"]) == {"seeds"} and c["boot_lo"].isna().all()
    assert any("its predictions give ctr_auc Δ" in w and "do not belong together" in w
               for w in s.warnings)


# --------------------------------------------------------------------------- load_runs
def test_load_runs_reads_one_row_per_run_in_the_grid_order(tree, runs):
    assert len(runs) == len(tree) == 2 * 2 * 3 * 6
    assert list(dict.fromkeys(runs["dataset"])) == list(DATASETS)  # not alphabetical
    assert set(runs["arm"]) == set(LOSSES)  # one setting per loss: the plain loss name
    row = runs[(runs["dataset"] == "synthetic") & (runs["model"] == "ple")
               & (runs["arm"] == "pwiser") & (runs["seed"] == 3)].iloc[0]
    metrics = json.loads((Path(row.run_dir) / "metrics.json").read_text())
    assert row.ctr_auc == metrics["ctr_auc"] and row.ctcvr_logloss == metrics["ctcvr_logloss"]
    # MMoE and PLE have no CVR tower: a CVR logloss in their metrics.json (as prlbench 0.3
    # wrote it) rests on a p_cvr capped at 1, and is not read
    assert "cvr_logloss" in metrics and "cvr_logloss" not in runs
    # written as prlbench 0.2 wrote it (no "norm"): read with the default of the later parameter
    assert json.loads(row.params) == {**PARAMS["pwiser"], "norm": "pairs"}


def test_arm_labels_name_only_the_settings_that_differ(tmp_path):
    rng = np.random.default_rng(1)
    dirs = [_write_run(tmp_path, "synthetic", "mmoe", loss, s, rng, p) for s in (1, 2)
            for loss, p in (("bce", {}), ("pwiser", {**PARAMS["pwiser"], "lam": 0.1}),
                            ("pwiser", {**PARAMS["pwiser"], "lam": 1.0}))]
    # On another model validation chose one setting: that arm keeps the plain name.
    dirs += [_write_run(tmp_path, "synthetic", "ple", loss, s, rng, p) for s in (1, 2)
             for loss, p in (("bce", {}), ("pwiser", {**PARAMS["pwiser"], "lam": 2.0}))]
    runs = analysis.load_runs(dirs)
    assert sorted(runs["arm"].unique()) == ["bce", "pwiser", "pwiser[lam=0.1]", "pwiser[lam=1]"]
    summary = analysis.summarise(runs, n_boot=200, delong=False, two_level=False)
    assert summary.settings["pwiser"]["lam"] == [2.0]
    assert summary.settings["pwiser[lam=0.1]"]["lam"] == [0.1]
    assert "PWiseR (λ=0.1) settings: λ=0.1, m1=0.05" in build_table(summary).caption


def test_arm_labels_keep_the_digits_that_tell_two_settings_apart(tmp_path):
    # lam=0.4285711 and lam=0.4285712 once both read "lam=0.428571": two runs of one arm per
    # seed, and no report. The label keeps the digits that tell them apart, no more.
    rng = np.random.default_rng(3)
    dirs = [_write_run(tmp_path, "synthetic", "mmoe", loss, 1, rng, p)
            for loss, p in (("bce", {}), ("pwiser", {**PARAMS["pwiser"], "lam": 0.4285711}),
                            ("pwiser", {**PARAMS["pwiser"], "lam": 0.4285712}),
                            ("ranknet", {"lam": 0.5, "score": "logit", "head": "ctr"}),
                            ("ranknet", {"lam": 3 / 7, "score": "logit", "head": "ctr"}))]
    runs = analysis.load_runs(dirs)
    assert sorted(runs["arm"].unique()) == [
        "bce", "pwiser[lam=0.4285711]", "pwiser[lam=0.4285712]", "ranknet[lam=0.428571]",
        "ranknet[lam=0.5]"]


def test_load_runs_errors_name_the_file_and_the_fix(tmp_path):
    rng = np.random.default_rng(2)
    d = _write_run(tmp_path, "synthetic", "mmoe", "bce", 1, rng)
    (d / "metrics.json").unlink()
    with pytest.raises(DataError, match=r"metrics\.json is missing.*evaluate"):
        analysis.load_runs([d])
    twin = [_write_run(tmp_path / x, "synthetic", "mmoe", "bce", 1, rng) for x in "ab"]
    with pytest.raises(DataError, match="two runs of synthetic/mmoe/bce seed 1"):
        analysis.load_runs(twin)
    with pytest.raises(DataError, match="no finished run folders"):
        analysis.load_runs([])


# --------------------------------------------------------------------------- summarise
def _holm_by_hand(p: np.ndarray) -> np.ndarray:
    """Holm step-down, written out: the i-th smallest p times (k - i), running max, cap 1."""
    out = np.full(len(p), np.nan)
    ok = [i for i in np.argsort(p) if not np.isnan(p[i])]
    running = 0.0
    for rank, i in enumerate(ok):
        running = max(running, min(1.0, (len(ok) - rank) * p[i]))
        out[i] = running
    return out


def test_summarise_matches_an_independent_recomputation(runs, summary_t):
    cells = summary_t.cells
    # data sets x models x metrics x (baseline + 2 arms); 5 metrics: MMoE and PLE have no CVR
    # tower, so no CVR logloss
    assert len(cells) == 2 * 2 * 5 * 3
    p_test = []
    for r in cells.itertuples():
        mine = runs[(runs.dataset == r.dataset) & (runs.model == r.model) & (runs.arm == r.arm)]
        base = runs[(runs.dataset == r.dataset) & (runs.model == r.model) & (runs.arm == "bce")]
        a = mine.sort_values("seed")[r.metric].to_numpy()
        b = base.sort_values("seed")[r.metric].to_numpy()
        assert r.n == 6 and r.mean == pytest.approx(a.mean(), abs=1e-15)
        assert r.std == pytest.approx(np.std(a, ddof=1), rel=1e-12)
        if r.is_baseline:
            assert np.isnan(r.p) and r.outcome == ""
            continue
        d = a - b
        assert r.n_pairs == 6 and r.delta_mean == pytest.approx(d.mean(), abs=1e-15)
        assert r.ttest_p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
        assert r.wilcoxon_p == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-9)
        assert r.delta_lo <= r.delta_mean <= r.delta_hi
        assert d.min() <= r.delta_lo and r.delta_hi <= d.max()  # a CI of the mean of these d
        if "auc" in r.metric:
            assert r.relaimpr == pytest.approx(((a.mean() - .5) / (b.mean() - .5) - 1) * 100)
        else:
            assert np.isnan(r.relaimpr)
        p_test.append((r.Index, "logloss" in r.metric, sps.ttest_rel(a, b).pvalue))
    # One Holm family per table: the 24 AUC cells, and the 16 logloss cells (no CVR logloss).
    for fam in (False, True):
        idx, _, p = zip(*(t for t in p_test if t[1] == fam))
        assert len(p) == (16 if fam else 24)
        np.testing.assert_allclose(cells.loc[list(idx), "p_adj"], _holm_by_hand(np.array(p)),
                                   rtol=1e-9)
    assert summary_t.n_comparisons == 24


def test_the_known_effect_is_found_and_nothing_else_is_a_loss(summary_t):
    c = summary_t.cells[~summary_t.cells["is_baseline"]]
    effect = (c["arm"] == "pwiser") & (c["model"] == "mmoe")
    assert (c.loc[effect, "outcome"] == "win").all()  # +0.004 AUC, -0.004 logloss on 6 seeds
    assert (c.loc[effect & c["metric"].str.contains("logloss"), "delta_mean"] < 0).all()
    assert (c.loc[~effect, "outcome"] != "loss").all()
    # Wins / n.s. / losses per arm and metric: recounted from the adjusted p values by hand.
    wtl = summary_t.wtl.set_index(["arm", "metric"])
    for (arm, metric), g in c.groupby(["arm", "metric"]):
        sign = -1 if "logloss" in metric else 1
        sig = g["p_adj"] < 0.05
        wins = int((sig & (sign * g["delta_mean"] > 0)).sum())
        losses = int((sig & (sign * g["delta_mean"] < 0)).sum())
        assert tuple(wtl.loc[(arm, metric), ["wins", "n.s.", "losses", "untested"]]) == (
            wins, len(g) - wins - losses, losses, 0)
    assert tuple(wtl.loc[("pwiser", "ctr_auc"), ["wins", "n.s.", "losses"]]) == (2, 2, 0)
    assert set(c["outcome"]) <= {"win", "n.s.", "loss"}  # no "tie", no "equivalent" unasked


def test_delong_per_seed_matches_the_textbook_form(runs, summary_t):
    dl = summary_t.delong
    assert len(dl) == 2 * 2 * 2 * 6 * 3  # data sets x models x arms x seeds x AUC metrics
    row = dl[(dl.dataset == "synthetic") & (dl.model == "mmoe") & (dl.arm == "pwiser")
             & (dl.seed == 2) & (dl.metric == "cvr_auc")].iloc[0]
    pick = runs[(runs.dataset == "synthetic") & (runs.model == "mmoe") & (runs.seed == 2)]
    arm, base = (pq.read_table(Path(pick[pick.arm == a].run_dir.iloc[0]) / "predictions.parquet"
                               ).to_pandas() for a in ("pwiser", "bce"))
    clicked = arm["click"] == 1  # CVR AUC: over clicked impressions
    ref = delong_slow(arm.conversion[clicked], arm.p_cvr[clicked], base.p_cvr[clicked])
    assert row.p == pytest.approx(ref.p, rel=1e-9) and row["diff"] == pytest.approx(ref.diff)
    cell = summary_t.cells.set_index(analysis.KEYS).loc[("synthetic", "mmoe", "cvr_auc",
                                                         "pwiser")]
    mine = dl[(dl.dataset == "synthetic") & (dl.model == "mmoe") & (dl.arm == "pwiser")
              & (dl.metric == "cvr_auc")]
    assert cell.delong_n == 6 and cell.delong_sig == int((mine.p < 0.05).sum())
    assert cell.delong_median_p == pytest.approx(np.median(mine.p))


def test_wilcoxon_and_holm_say_when_significance_is_out_of_reach(summary_w, runs):
    # 6 seeds: smallest Wilcoxon p 2/2**6; Holm multiplies it by the 24 comparisons of a table.
    assert any("Holm over 24 comparisons cannot reach significance" in w
               for w in summary_w.warnings)
    assert not summary_w.cells["significant"].any()
    five = analysis.summarise(runs[runs.seed <= 5], n_boot=200, delong=False, two_level=False,
                              test="wilcoxon")
    # the advice counts the correction: 2 / 2**n < 0.05 / 24 needs n = 10
    assert any("smallest possible p is 0.0625; use 10 seeds or more (with this table's holm"
               in w for w in five.warnings)
    # Benjamini-Hochberg has no such floor (48 p values of 2/2**6 would all pass).
    bh = analysis.summarise(runs, correction="bh", n_boot=200, delong=False, two_level=False)
    assert not any("cannot reach" in w for w in bh.warnings)


def test_pairing_uses_only_seeds_both_arms_have(runs):
    drop = (runs.dataset == "synthetic") & (runs.model == "ple") & (runs.arm == "ranknet") & (
        runs.seed == 4)
    s = analysis.summarise(runs[~drop], test="ttest", n_boot=200, delong=False, two_level=False)
    cell = s.cells.set_index(analysis.KEYS).loc[("synthetic", "ple", "ctr_auc", "ranknet")]
    assert cell.n == 5 and cell.n_pairs == 5 and cell.paired_seeds == "1;2;3;5;6"
    assert any("synthetic/ple/ranknet: paired with the baseline on 5 of 6 seeds (unpaired: 4)"
               in w for w in s.warnings)


def test_one_seed_warns_and_tests_nothing(runs):
    s = analysis.summarise(runs[runs.seed == 1], n_boot=200)
    assert any("only 1 seed: no significance test is possible" in w for w in s.warnings)
    other = s.cells[~s.cells["is_baseline"]]
    assert other[["p", "p_adj", "ttest_p", "wilcoxon_p", "delta_lo", "std"]].isna().all().all()
    assert (other["outcome"] == "untested").all() and s.n_comparisons == 0
    md = to_markdown(build_table(s), layout="detail")
    tex = to_latex(build_table(s), layout="detail")
    assert "no test (1 seed)" in md and "no test (1 seed)" in tex
    assert "No significance test" in md and "±" not in md.split("\n\n")[0]


def test_bad_options_are_data_errors(runs):
    with pytest.raises(DataError, match="test must be one of twolevel, wilcoxon, ttest"):
        analysis.summarise(runs, test="ztest")
    with pytest.raises(DataError, match="correction must be one of holm, bh"):
        analysis.summarise(runs, correction="bonferroni")


# ------------------------------------------------------------------- renderers: golden
def small_summary(test: str = "ttest") -> analysis.Summary:
    """A fixed, hand-typed table: one data set, two models, BCE and PWiseR, six seeds.
    PWiseR gains on MMoE (every AUC up, every logloss down), and on PLE it is level on AUC and
    worse on logloss, so the table shows a win, ties and a loss."""
    seed_wobble = np.array([0.0, 1.3, -1.2, 0.7, -0.5, 1.0]) * 1e-3
    deltas = {"mmoe": np.array([12, 9, 15, 11, 8, 13]) * 1e-4,
              "ple": np.array([4, -2, 6, -1, 5, 2]) * 1e-4}
    rows = []
    for model, offset in (("mmoe", 0.0), ("ple", 0.004)):
        for loss in ("bce", "pwiser"):
            for i, seed in enumerate(SEEDS):
                gain = deltas[model][i] if loss == "pwiser" else 0.0
                worse = (20 + i % 3) * 1e-4 if (loss == "pwiser" and model == "ple") else 0.0
                row = {"dataset": "aliexpress_nl", "model": model, "loss": loss, "arm": loss,
                       "params": json.dumps(PARAMS[loss], sort_keys=True), "seed": seed,
                       "run_id": f"{model}-{loss}-s{seed}", "run_dir": ""}
                for j, task in enumerate(("ctr", "ctcvr", "cvr")):
                    row[f"{task}_auc"] = round(0.72 + 0.05 * j + offset + seed_wobble[i] + gain, 6)
                    row[f"{task}_logloss"] = round(0.40 - 0.1 * j + seed_wobble[i] / 2 - gain
                                                   + worse, 6)
                rows.append(row)
    return analysis.summarise(pd.DataFrame(rows), test=test, n_boot=2000, delong=False,
                              two_level=False)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PRLBENCH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with PRLBENCH_UPDATE_GOLDEN=1, then review it"
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from the golden file; if the change is intended, regenerate with "
        "PRLBENCH_UPDATE_GOLDEN=1 and review the diff")


@pytest.mark.parametrize("layout", ["paper", "detail"])
def test_markdown_matches_the_golden_file(layout):
    name = "auc.md" if layout == "paper" else "auc_detail.md"
    _golden(name, to_markdown(build_table(small_summary()), layout=layout))


@pytest.mark.parametrize("layout", ["paper", "detail"])
def test_latex_matches_the_golden_file(layout):
    name = "auc.tex" if layout == "paper" else "auc_detail.tex"
    _golden(name, to_latex(build_table(small_summary()), layout=layout))


def test_csv_matches_the_golden_file():
    text = to_csv(small_summary())
    path = GOLDEN / "cells.csv"
    if os.environ.get("PRLBENCH_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    # Compared as data: library versions may differ in the last bits of a p value.
    got, want = pd.read_csv(pd.io.common.StringIO(text)), pd.read_csv(path)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)


def test_csv_holds_every_number_at_full_precision():
    s = small_summary()
    back = pd.read_csv(pd.io.common.StringIO(to_csv(s)))
    assert list(back.columns[:4]) == ["dataset", "model", "metric", "arm"]
    for col in ("mean", "std", "delta_mean", "delta_lo", "delta_hi", "relaimpr", "ttest_p",
                "wilcoxon_p", "p_adj"):
        np.testing.assert_array_equal(back[col].to_numpy(float), s.cells[col].to_numpy(float))


def test_markdown_shows_the_win_the_tie_the_loss_and_the_best():
    md = to_markdown(build_table(small_summary()), layout="detail")
    ll = to_markdown(build_table(small_summary(), kind="logloss"), layout="detail")
    assert md.count("↑\\*") == 3 and "↓\\*" not in md  # MMoE x 3 AUC metrics
    # PLE worse, MMoE better, on CTR and CTCVR logloss (no CVR logloss: no CVR tower)
    assert ll.count("↓\\*") == 2 and ll.count("↑\\*") == 2 and "| CVR logloss" not in ll
    assert re.search(r"\| PWiseR +\| +1 / 1 / 0 \|.*\| +3 / 3 / 0 \|", md)
    assert re.search(r"\| PWiseR +\| +1 / 0 / 1 \|.*\| +2 / 0 / 2 \|", ll)
    best = re.findall(r"\*\*([0-9.]+) ± [0-9.]+\*\*", md)
    assert len(best) == 3  # one best per column (one data set)


# ---------------------------------------------------------------------- LaTeX structure
def _check_latex_structure(tex: str) -> None:
    body = re.sub(r"\\[{}%$&#_]", "", tex)  # escaped characters are not grouping
    body = "\n".join(line.split("%")[0] for line in body.splitlines())  # comments
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unbalanced braces"
    assert body.count(r"\begin{tabular}") == body.count(r"\end{tabular}") >= 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in body
    assert tex.isascii(), "non-ASCII characters would need inputenc; escape them"
    # Every row of the main tabular has as many cells as the column spec has columns.
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
    table = tex.split(r"\begin{tabular}{" + spec + "}")[1].split(r"\bottomrule")[0]
    rows = [line for line in table.splitlines() if line.endswith(r"\\")]
    assert len(rows) >= 2
    for line in rows:  # one row per line; the cells' nested tabulars hold no &
        assert len(re.split(r"(?<!\\)&", line)) == len(spec), line


def test_latex_structure_and_captions():
    s = small_summary()
    table = build_table(s)
    detail = to_latex(table, layout="detail")
    _check_latex_structure(detail)
    caption = re.search(r"\\caption\{(.*)\}\n\\label\{tab:prlbench-auc-detail\}", detail).group(1)
    for needed in ("over 6 seeds (1--6)", "RelaImpr", "Test-split",
                   r"95 \% bootstrap CI over seeds", "unadjusted"):
        assert needed in caption, needed
    paper = to_latex(table)
    caption = re.search(r"\\caption\{(.*)\}\n\\label\{tab:prlbench-auc\}", paper).group(1)
    for needed in ("mean $\\pm$ std over 6 seeds (1--6)", "paired t-test over seeds",
                   "Holm-corrected over the table's 6 comparisons", "not significant",
                   "Bold: best mean per column"):
        assert needed in caption, needed
    assert r"\resizebox" not in paper + detail and "graphicx" not in paper + detail
    # the best mean per column in bold, the three MMoE wins marked
    assert paper.count(r"\textbf{") == 3 and paper.count(r"\,$\uparrow^{*}$") == 3
    _check_latex_structure(to_latex(table, standalone=True, layout="detail"))


def test_short_captions_stay_short_and_the_setup_says_the_rest():
    from prlbench.report.setup import setup_text

    def words(text: str) -> int:
        return len(text.split())

    s = small_summary()
    for kind in ("auc", "logloss"):
        for cells in ("std", "ci", "mean"):
            t = build_table(s, kind=kind, cells=cells)
            for text in (t.paper_caption, t.paper_caption_split, t.detail_caption):
                assert 15 <= words(text) <= 65, (kind, cells, words(text), text)
    long = build_table(s).caption
    assert words(long) > 150  # the detail Markdown's caption: the whole protocol
    setup = setup_text(s)
    # what the short captions leave out is in the setup paragraph
    for needed in ("λ=0.5", "m1=0.05", "m2=0.1", "φ=squared hinge", "s=probability",
                   "norm=pairs", "publishes none", "RelaImpr", "Holm correction [@holm1979simple]",
                   "[@durmus2024pwiser]", "MMoE [@ma2018mmoe]", "PLE [@tang2020ple]"):
        assert needed in setup, needed


def test_latex_escapes_specials_and_symbols():
    from prlbench.report.latex import escape

    assert escape("a_b 50 % & $x# ±0.1 Δ λ φ") == (
        r"a\_b 50 \% \& \$x\# $\pm$0.1 $\Delta$ $\lambda$ $\phi$")
    assert escape("seeds 1–6, -0.0011 and Shared-Bottom") == (
        r"seeds 1--6, $-$0.0011 and Shared-Bottom")
    # Text-mode "<" would print as an inverted exclamation mark under OT1.
    assert escape("p < 0.05, n > 5, |x|") == r"p $<$ 0.05, n $>$ 5, $|$x$|$"
    # the crossed model's symbols; "--equivalence" stays two hyphens, not an en dash
    assert escape("Φ(Δ̄ / √(s² + G)) --equivalence") == (
        r"$\Phi$($\bar{\Delta}$ / $\surd$(s$^{2}$ + G)) -{}-equivalence")


def _pdflatex(tmp_path: Path, name: str, source: str) -> str:
    """Compile `source`; returns the PDF's text where pdftotext exists, else ""."""
    (tmp_path / f"{name}.tex").write_text(source)
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / f"{name}.pdf").stat().st_size > 1000
    if not shutil.which("pdftotext"):
        return ""
    return subprocess.run(["pdftotext", f"{name}.pdf", "-"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60).stdout


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex here")
@pytest.mark.slow
def test_latex_compiles_standalone_and_inside_a_plain_paper(tmp_path):
    # (the two-level captions, with the crossed model's symbols: test_protocol's noise sweep)
    for kind in ("auc", "logloss"):
        for layout in ("paper", "detail"):
            table = build_table(small_summary(), kind=kind)
            name = f"{kind}-{layout}"
            _pdflatex(tmp_path, f"{name}-standalone", to_latex(table, standalone=True,
                                                               layout=layout))
            # A paper's preamble with no fontenc (OT1): a text-mode "<" would print as "¡".
            (tmp_path / f"{name}.tex").write_text(to_latex(table, layout=layout))
            text = _pdflatex(tmp_path, f"{name}-paper", "\\documentclass{article}\n"
                             "\\usepackage{booktabs}\n"
                             f"\\begin{{document}}\n\\input{{{name}.tex}}\n\\end{{document}}\n")
            if text:
                assert "¡" not in text and "¿" not in text
                if layout == "paper":
                    assert "p < 0.05" in " ".join(text.split())


# ------------------------------------------------------------------------ write_report
def test_write_report_writes_every_table(summary_t, tmp_path):
    paths = write_report(summary_t, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["auc.md", "auc.tex", "auc_detail.md", "auc_detail.tex", "cells.csv",
                     "delong.csv", "logloss.md", "logloss.tex", "logloss_detail.md",
                     "logloss_detail.tex", "references.bib", "runs.csv", "setup.md",
                     "setup.tex"]
    assert all(p.parent == tmp_path / "tables" and p.stat().st_size > 100 for p in paths)
    assert not list((tmp_path / "tables").glob(".*"))  # no temporary files left
    runs_table = pd.read_csv(tmp_path / "tables" / "runs.csv")
    assert runs_table.shape[0] == 72
    assert runs_table["rows"].dtype.kind == "i"  # counts written as counts (2000, not 2000.0)
    only_md = write_report(summary_t, tmp_path / "md", formats=("md",))
    # the CSVs come whatever the formats: the captions refer to cells.csv
    assert sorted(p.name for p in only_md) == [
        "auc.md", "auc_detail.md", "cells.csv", "delong.csv", "logloss.md", "logloss_detail.md",
        "runs.csv", "setup.md"]
    auc, logloss = (tmp_path / "md" / "tables" / n for n in ("auc_detail.md",
                                                             "logloss_detail.md"))
    assert "cells.csv" in auc.read_text()
    assert "DeLong" in auc.read_text() and "DeLong" not in logloss.read_text()  # AUC-only test
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in paths)  # not mkstemp's 0600


# ------------------------------------------------------------------------------- plots
def _check_image(paths: list[Path]) -> None:
    png, pdf = sorted(paths, key=lambda p: p.suffix, reverse=True)
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.suffix == ".pdf" and pdf.read_bytes()[:5] == b"%PDF-"
    assert png.stat().st_size > 10_000


def test_forest_plot_is_written_and_nothing_overlaps(summary_t, tmp_path):
    fig = plots.forest_figure(summary_t)
    assert overlapping_texts(fig) == []
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "Δ CTR AUC"
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "Synthetic · MMoE" and len(labels) == 4
    _check_image(plots.save(fig, tmp_path / "forest"))
    # for papers: one column (3.3 in, the panels stacked) and the full width (7 in)
    paths = plots.forest_plot(summary_t, tmp_path / "paper")
    assert [p.name for p in paths] == ["paper.png", "paper.pdf", "paper-wide.pdf"]
    assert [pdf_width_in(p) for p in paths[1:]] == [3.3, 7.0]
    with plots._plt().rc_context(plots.PAPER_RC):
        for width in ("column", "wide"):
            fig = plots.forest_figure(summary_t, width=width)
            assert overlapping_texts(fig) == []
            assert fig.axes[0].get_title() == "Δ CTR AUC"  # the tables' labels
            assert fig.axes[0].title.get_fontsize() == 10.0  # a 10 pt paper's body size
            plots._plt().close(fig)


def test_paper_forest_plots_fit_long_variant_names(tmp_path):
    """A sweep's variant names (every knob spelled out) are wrapped on a paper's narrow
    figure, each row as tall as its label: no overlap, no collapsed layout."""
    import warnings

    ds = ("synthetic[click=0.2,conversion=0.3,noise=0,rows=6000]",
          "synthetic[click=0.2,conversion=0.3,noise=0.6,rows=6000]")
    runs = analysis.load_runs(make_tree(tmp_path, datasets=ds, models=("mmoe",)))
    s = analysis.summarise(runs, n_boot=100, delong=False, two_level=False)
    plt = plots._plt()
    with warnings.catch_warnings(), plt.rc_context(plots.PAPER_RC):
        warnings.simplefilter("error")  # "constrained_layout not applied" is a failure
        for width in ("column", "wide"):
            fig = plots.forest_figure(s, width=width)
            assert overlapping_texts(fig) == []
            plt.close(fig)


@pytest.mark.slow
def test_validation_curves_are_written_and_nothing_overlaps(runs, tmp_path):
    fig = plots.validation_figure(runs)
    assert overlapping_texts(fig) == []
    assert len(fig.axes) == 4 * 2  # (data set, model) panels x (CTR, CTCVR)
    _check_image(plots.save(fig, tmp_path / "validation"))
    # One panel (the default compare): the narrowest figure, the legend must still fit.
    first = runs[(runs["dataset"] == runs["dataset"].iloc[0])
                 & (runs["model"] == runs["model"].iloc[0])]
    for fig in (plots.validation_figure(first),
                plots.forest_figure(analysis.summarise(first, n_boot=100, delong=False,
                                                       two_level=False))):
        assert overlapping_texts(fig) == []


@pytest.mark.slow
def test_plots_stay_readable_with_eight_models_and_one_seed(tmp_path):
    models = ("single_task", "shared_bottom", "esmm", "omoe", "mmoe", "ple", "aitm", "metaheac")
    runs = analysis.load_runs(make_tree(tmp_path, seeds=(1,), models=models,
                                        datasets=("aliccp",)))
    s = analysis.summarise(runs, n_boot=100, delong=False, two_level=False)
    for fig in (plots.forest_figure(s), plots.validation_figure(runs)):
        assert overlapping_texts(fig) == []
        plots._plt().close(fig)


def test_relaimpr_is_left_out_for_a_baseline_at_or_below_random():
    """A baseline AUC <= 0.5 has no lift to compare against: RelaImpr would flip sign."""
    rows = []
    for loss, auc in (("bce", 0.45), ("pwiser", 0.55)):
        for seed in SEEDS:
            row = {"dataset": "synthetic", "model": "mmoe", "loss": loss, "arm": loss,
                   "params": json.dumps(PARAMS[loss], sort_keys=True), "seed": seed,
                   "run_id": f"{loss}-s{seed}", "run_dir": ""}
            for j, task in enumerate(("ctr", "ctcvr", "cvr")):
                row[f"{task}_auc"] = auc + 0.1 * j + 1e-4 * seed * (loss == "pwiser")
                row[f"{task}_logloss"] = 0.4
            rows.append(row)
    s = analysis.summarise(pd.DataFrame(rows), test="ttest", n_boot=200, delong=False,
                           two_level=False)
    c = s.cells[(s.cells["arm"] == "pwiser") & s.cells["metric"].str.endswith("auc")]
    ctr = c[c["metric"] == "ctr_auc"].iloc[0]
    assert np.isnan(ctr["relaimpr"])  # base 0.45
    assert (c[c["metric"] != "ctr_auc"]["relaimpr"] > 0).all()  # bases 0.55, 0.65
    md = to_markdown(build_table(s), layout="detail")
    assert "RelaImpr is left out where BCE's AUC is 0.5 or below" in md
    assert "left out" not in to_markdown(build_table(small_summary()), layout="detail")


def test_capped_cvr_share_is_stated_under_tables_with_a_cvr_column():
    s = small_summary()
    assert "in up to" not in to_markdown(build_table(s, kind="logloss"),
                                         layout="detail")  # no share recorded
    runs = s.runs.copy()
    runs["cvr_clipped_share"] = np.where(runs["model"] == "mmoe", 0.0123, 0.0)
    s2 = analysis.summarise(runs, test="ttest", n_boot=200, delong=False, two_level=False)
    assert "capped at 1 where p_CTCVR exceeds p_CTR: in up to 1.2% of a run's clicked" in \
        to_markdown(build_table(s2), layout="detail")  # the AUC table's CVR AUC column
    no_cvr = to_markdown(build_table(s2, metrics=("ctr_auc", "ctcvr_auc")), layout="detail")
    assert "in up to" not in no_cvr


def test_validation_plot_of_one_epoch_has_whole_epoch_ticks_and_error_bars(tmp_path):
    rng = np.random.default_rng(0)
    paths = [_write_run(tmp_path, "synthetic", "mmoe", loss, seed, rng, epochs=1)
             for loss in ("bce", "pwiser") for seed in (1, 2, 3)]
    fig = plots.validation_figure(analysis.load_runs(paths))
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert ticks == ["1"]
    assert all(len(ax.containers) == 2 for ax in fig.axes)  # one error bar per arm
    assert overlapping_texts(fig) == []


def test_identical_deltas_leave_the_t_test_undefined_not_significant():
    rows = []
    for loss in ("bce", "pwiser"):
        for seed in (1, 2):
            row = {"dataset": "synthetic", "model": "mmoe", "loss": loss, "arm": loss,
                   "params": json.dumps(PARAMS[loss], sort_keys=True), "seed": seed,
                   "run_id": f"{loss}-s{seed}", "run_dir": ""}
            for j, task in enumerate(("ctr", "ctcvr", "cvr")):  # the same step on both seeds
                row[f"{task}_auc"] = 0.7 + 0.01 * seed + (0.00319 if loss == "pwiser" else 0)
                row[f"{task}_logloss"] = 0.4 + 0.01 * seed * (j + 1) * (1 + (loss == "pwiser"))
            rows.append(row)
    s = analysis.summarise(pd.DataFrame(rows), test="ttest", correction="bh", n_boot=200,
                           delong=False, two_level=False)
    auc = s.cells[(s.cells["arm"] == "pwiser") & s.cells["metric"].str.endswith("auc")]
    assert auc["p"].isna().all() and (auc["outcome"] == "untested").all()
    assert any("t-test undefined for 3 cell(s)" in w for w in s.warnings)


def test_a_baseline_only_report_says_so():
    s = small_summary()
    base_only = analysis.summarise(s.runs[s.runs["arm"] == "bce"], test="ttest", n_boot=200,
                                   delong=False, two_level=False)
    md = to_markdown(build_table(base_only), layout="detail")
    assert "Only BCE was run: no loss to compare with it." in md
    assert "Δ" not in md and "2 seeds or more" not in md
    assert plots._forest_xlabel(base_only) == "only BCE was run: no difference to show"


def test_a_text_setting_chosen_on_validation_is_named_in_the_caption():
    s = small_summary()
    s.selection = {"seeds": [1001, 1002], "train": {"lr": [0.0005, 0.001]},
                   "losses": {"pwiser": {"phi": ["hinge", "squared_hinge"]}},
                   "budget": {"bce": 2, "pwiser": 4}}
    text = " ".join(to_markdown(build_table(s), layout="detail").split())
    assert ("over tuning seeds 1001, 1002 (never reported): lr ∈ {0.0005, 0.001} for every "
            "arm; φ ∈ {hinge, squared hinge} for PWiseR; settings tried per arm (each on 2 "
            "seeds): BCE 2, PWiseR 4.") in text


def test_differences_equal_up_to_rounding_leave_the_t_test_undefined():
    from prlbench.stats import paired_ttest

    t = paired_ttest([0.7, 0.8], [0.6, 0.7])  # 0.1 and 0.1, apart in the last bits
    assert t.statistic == np.inf and np.isnan(t.p)
    assert paired_ttest([0.7, 0.8], [0.7, 0.8]).p == 1.0


def test_runs_trained_with_different_thread_counts_are_flagged(tmp_path):
    paths = make_tree(tmp_path, seeds=(1, 2), datasets=("synthetic",), models=("mmoe",),
                      losses=("bce", "pwiser"))
    for i, d in enumerate(paths):
        record = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**record, "threads": 1 + (i == 0)}))
    s = analysis.summarise(analysis.load_runs(paths), n_boot=200, delong=False, two_level=False)
    assert any("different torch thread counts (1 thread (3 runs), 2 threads (1 runs))" in w
               and "delete the runs of the other count" in w for w in s.warnings)
    same = [p for p in paths[1:]]
    assert not any("thread" in w for w in analysis.summarise(
        analysis.load_runs(same), n_boot=200, delong=False, two_level=False).warnings)


def test_runs_of_a_stacked_pack_mixed_with_others_are_flagged(tmp_path):
    """prlbench 0.3's stacked packs agreed with solo runs to float tolerance only; packs since
    ("turns") train byte for byte as solo runs and are not flagged."""
    paths = make_tree(tmp_path, seeds=(1, 2), datasets=("synthetic",), models=("mmoe",),
                      losses=("bce", "pwiser"))
    for d, extra in zip(paths, ({}, {}, {"pack_mode": "turns"}, {"pack_mode": "turns"})):
        record = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**record, "packed_with": [record["run_id"]],
                                                **extra}))
    s = analysis.summarise(analysis.load_runs(paths), n_boot=200, delong=False, two_level=False)
    assert any("2 of the 4 runs were trained in a stacked pack of prlbench 0.3" in w
               for w in s.warnings)
    assert list(s.runs["packed"]).count(True) == 4
    assert list(s.runs["stacked_pack"]).count(True) == 2
    assert not any("stacked pack" in w for w in analysis.summarise(
        analysis.load_runs(paths[2:]), n_boot=200, delong=False, two_level=False).warnings)


def test_ci_bounds_keep_their_sign_when_they_round_to_zero():
    from prlbench.report.table import bound, signed

    assert (bound(0.00004, 4), bound(-0.00004, 4), bound(0.0, 4)) == ("+0.0000", "-0.0000",
                                                                      "0.0000")
    assert signed(0.00004, 4) == "0.0000"  # a point estimate's sign below precision is not shown


def test_a_report_that_fails_midway_leaves_the_previous_one_and_no_staging(summary_t,
                                                                           tmp_path,
                                                                           monkeypatch):
    import errno

    from prlbench import report

    write_report(summary_t, tmp_path)
    (tmp_path / "tables" / "notes.txt").write_text("mine")  # not a report file: left alone
    before = {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir()}
    real, calls = report.to_latex, []

    def disk_fills(table, **kw):  # the second LaTeX table finds the disk full
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, **kw)

    monkeypatch.setattr(report, "to_latex", disk_fills)
    with pytest.raises(OSError, match="No space"):
        write_report(summary_t, tmp_path, formats=("md", "tex"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables"]  # no staging folder left
    monkeypatch.setattr(report, "to_latex", real)
    paths = write_report(summary_t, tmp_path, formats=("md",))
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == sorted(
        [p.name for p in paths] + ["notes.txt"])  # the .tex of the earlier report is gone


def test_every_csv_column_is_documented_in_results_format(summary_t, tmp_path):
    """docs/results-format.md lists each CSV's columns from report.csvout; the files a report
    writes hold those columns and no other (runs.csv: plus the documented test metrics)."""
    from prlbench.metrics import METRICS
    from prlbench.report.csvout import CSV_FILES

    write_report(summary_t, tmp_path)
    tables = tmp_path / "tables"
    documented = {name: [c for c, _, _ in cols] for name, cols in CSV_FILES.items()}
    cells = list(pd.read_csv(tables / "cells.csv").columns)
    assert cells == [c for c in documented["cells.csv"] if c in cells]  # in the documented order
    assert set(cells) <= set(documented["cells.csv"])
    assert {"delta_mean", "p_adj", "outcome", "family"} <= set(cells)
    metrics = {m for m in METRICS if METRICS.get(m).split == "test"}
    runs = set(pd.read_csv(tables / "runs.csv").columns)
    assert runs <= set(documented["runs.csv"]) | metrics, runs - set(documented["runs.csv"])
    assert list(pd.read_csv(tables / "delong.csv").columns) == documented["delong.csv"]
    page = (Path(__file__).resolve().parents[1] / "docs" / "results-format.md").read_text()
    for name, cols in documented.items():
        assert f"## tables/{name}" in page
        assert all(f"| `{c}` |" in page for c in cols), name
