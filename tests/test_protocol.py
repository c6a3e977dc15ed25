"""The protocol: tuning on seeds of its own with the same budget for every arm, "n.s." rather than
"tie", the equivalence test, and a CVR logloss that no clip constant decides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prlbench.engine.evaluate import test_metrics as engine_test_metrics
from prlbench.errors import ConfigError, DataError
from prlbench.experiment.grid import CompareConfig, parse_tune_seeds
from prlbench.report import analysis, build_table, to_markdown
from prlbench.report.table import marker, wtl_rows
from prlbench.stats import logloss


def resolved(**flags) -> CompareConfig:
    return CompareConfig.resolve(None, {"datasets": "synthetic", "models": "mmoe", **flags})


# ------------------------------------------------------------------------- tuning seeds
@pytest.mark.parametrize("text,seeds,expected", [
    (None, (1, 2, 3), (1001, 1002)),
    ("3", (1, 2), (1001, 1002, 1003)),
    ("7,8", (1, 2), (7, 8)),
    ("9", tuple(range(1, 9)), tuple(range(1001, 1010))),
    ("0,100", (1, 2), (0, 100)),
])
def test_tuning_seeds_are_a_count_from_1001_or_a_list(text, seeds, expected):
    assert parse_tune_seeds(text, seeds) == expected


@pytest.mark.parametrize("text,seeds,fragment", [
    ("2,3", (1, 2, 3), "--tune-seeds .2,3. and --seeds share seeds 2, 3"),
    ("1", (1,), None),  # a count: seed 1001, no overlap with seed 1
    ("1", (1001,), "share seed 1001"),  # a count starts at 1001, which --seeds lists
    ("0", (1,), "give a count from 1"),
    ("1,1", (5,), "no repeats"),
    ("x", (1,), "--tune-seeds: expected a count"),
    ("-3,4", (1,), "none negative"),
])
def test_bad_tuning_seeds_are_refused_naming_the_fix(text, seeds, fragment):
    if fragment is None:
        assert not set(parse_tune_seeds(text, seeds)) & set(seeds)
        return
    with pytest.raises(ConfigError, match=fragment):
        parse_tune_seeds(text, seeds)


def test_overlapping_tuning_seeds_fail_before_any_training():
    with pytest.raises(ConfigError, match="share seed 2"):
        resolved(losses="bce,pwiser", lam="0.1,1", seeds="1,2", tune_seeds="2,9")


def test_a_training_setting_list_tunes_every_arm_the_baseline_included():
    grid = resolved(losses="bce,pwiser", lr="0.0005,0.002", lam="0.1,1", seeds="4").grid
    assert grid.candidates("bce") == [{"lr": 0.0005}, {"lr": 0.002}]
    assert len(grid.candidates("pwiser")) == 4  # lr x lambda
    assert grid.tuned("bce") and grid.tuned("pwiser")
    assert grid.size() == (2 + 4) * 2 + 2 * 4  # candidates x tuning seeds, then 2 arms x 4 seeds
    cfg = grid.config("synthetic", "mmoe", "bce", 1001, {"lr": 0.002})
    assert cfg.train.lr == 0.002 and cfg.train.seed == 1001 and cfg.loss.params == {}
    cfg = grid.config("synthetic", "mmoe", "pwiser", 3, {"lr": 0.0005, "lam": 1.0})
    assert cfg.train.lr == 0.0005 and cfg.loss.params["lam"] == 1.0
    sel = grid.selection()
    assert sel["train"] == {"lr": [0.0005, 0.002]} and sel["budget"] == {"bce": 2, "pwiser": 4}


def test_one_value_is_fixed_for_every_run_and_tunes_nothing():
    grid = resolved(losses="bce,pwiser", lr="0.002", weight_decay="0").grid
    assert grid.candidates("bce") == [{"lr": 0.002, "weight_decay": 0.0}]
    assert not grid.tuned("bce") and grid.selection() == {}
    assert grid.size() == 2 * 8  # no tuning run


@pytest.mark.parametrize("flags,fragment", [
    (dict(lr="0.001,-1"), "lr"),
    (dict(lr="abc"), "--lr: expected a number"),
    (dict(weight_decay=","), "--weight-decay is empty"),
    (dict(equivalence=0.0), "margin must be a finite number > 0"),
    (dict(equivalence=float("nan")), "margin must be a finite number > 0"),
    (dict(equivalence="1"), "above the bound 0.02"),
    (dict(equivalence="ndcg=0.001"), "unknown metric kind"),
    (dict(test="anova"), "--test must be twolevel, wilcoxon, ttest or bootstrap"),
])
def test_bad_protocol_options_fail_before_training(flags, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolved(losses="bce,pwiser", **flags)


# ------------------------------------------------------------------ n.s. and equivalence
def _runs(deltas: dict[str, np.ndarray]) -> pd.DataFrame:
    """One data set and model, BCE and one arm per entry, every AUC moved by the arm's
    per-seed deltas (the loglosses by minus them)."""
    wobble = np.array([0.0, 1.3, -1.2, 0.7, -0.5, 1.0, 0.4, -0.9]) * 1e-3
    rows = []
    for arm, d in {"bce": np.zeros(8), **deltas}.items():
        for i in range(8):
            row = {"dataset": "synthetic", "model": "esmm", "loss": arm, "arm": arm,
                   "params": "{}", "seed": i + 1, "run_id": f"{arm}-{i}", "run_dir": ""}
            for j, task in enumerate(("ctr", "ctcvr", "cvr")):
                row[f"{task}_auc"] = 0.7 + 0.05 * j + wobble[i] + d[i]
                row[f"{task}_logloss"] = 0.4 - 0.1 * j + wobble[i] - d[i]
            rows.append(row)
    return pd.DataFrame(rows)


SMALL = np.array([1, -1, 2, -2, 1, 0.5, -1.5, 0.2]) * 1e-5  # |mean| << 0.001, spread tiny
BIG = np.array([30, 28, 33, 31, 29, 32, 30, 34]) * 1e-4  # +0.003, every seed
NOISY = np.array([40, -35, 20, -25, 30, -45, 10, 5]) * 1e-4  # straddles 0 and the margin


@pytest.mark.parametrize("test", ["ttest", "wilcoxon"])
def test_only_the_equivalence_test_may_call_a_cell_equivalent(test):
    # Wilcoxon with 8 seeds reaches p = 2 / 2**8 at best: Holm over 3 metrics x 2 arms keeps it
    # under 0.05, over 3 arms not, so the noisy arm joins the t-test's table only.
    arms = {"pwiser": SMALL, "ranknet": BIG, **({"listce": NOISY} if test == "ttest" else {})}
    runs = _runs(arms)
    plain = analysis.summarise(runs, test=test, n_boot=500, delong=False, two_level=False)
    margin = analysis.summarise(runs, test=test, n_boot=500, delong=False, two_level=False,
                                equivalence=0.001)
    for s in (plain, margin):
        outcome = s.cells.set_index(["arm", "metric"])["outcome"]
        assert set(outcome[("ranknet", m)] for m in ("ctr_auc", "ctcvr_auc")) == {"win"}
        assert outcome[("ranknet", "ctr_logloss")] == "win"  # lower logloss: better
        if test == "ttest":
            assert outcome[("listce", "ctr_auc")] == "n.s."
        assert "tie" not in set(s.cells["outcome"])
    # Without a margin nothing is "equivalent"; with one, the tiny deltas are, the noisy not.
    assert not (plain.cells["outcome"] == "equivalent").any()
    assert plain.cells.loc[plain.cells["arm"] == "pwiser", "outcome"].eq("n.s.").all()
    eq = margin.cells.set_index(["arm", "metric"])
    assert eq.loc[("pwiser", "ctr_auc"), "outcome"] == "equivalent"
    assert eq.loc[("pwiser", "ctr_auc"), "eq_p_adj"] < 0.05
    if test == "ttest":
        assert eq.loc[("listce", "ctr_auc"), "outcome"] == "n.s."
        assert eq.loc[("listce", "ctr_auc"), "eq_p_adj"] >= 0.05
    # a significant difference stays a win even though it is within a wider margin
    wide = analysis.summarise(runs, test=test, n_boot=500, delong=False, two_level=False,
                              equivalence=0.01)
    assert wide.cells.set_index(["arm", "metric"]).loc[("ranknet", "ctr_auc"), "outcome"] \
        == "win"


def test_the_summary_and_tables_say_n_s_and_equivalent():
    runs = _runs({"pwiser": SMALL, "listce": NOISY})
    s = analysis.summarise(runs, test="ttest", n_boot=500, delong=False, two_level=False,
                           equivalence=0.001)
    wtl = s.wtl.set_index(["arm", "metric"])
    # n.s. counts every non-significant cell, the equivalent ones among them
    assert (wtl.loc[("pwiser", "ctr_auc"), ["wins", "n.s.", "losses", "equivalent"]].tolist()
            == [0, 1, 0, 1])
    assert (wtl.loc[("listce", "ctr_auc"), ["wins", "n.s.", "losses", "equivalent"]].tolist()
            == [0, 1, 0, 0])
    table = build_table(s)
    marks = {r.arm: marker(r.cells[0]) for r in table.rows if not r.is_baseline}
    assert marks == {"pwiser": "≈", "listce": "n.s."}
    _, rows = wtl_rows(table)
    assert any("3 equivalent" in cell for row in rows for cell in row)
    md = " ".join(to_markdown(table, layout="detail").split())
    assert "Wins / n.s. / losses" in md and "tie" not in md.lower()
    assert "within ±0.001 (AUC) by two one-sided paired t-test tests" in md
    assert "each family controls its own error at 0.05" in md
    plain = analysis.summarise(runs, test="ttest", n_boot=500, delong=False, two_level=False)
    assert "n.s. does not mean equal" in " ".join(to_markdown(build_table(plain),
                                                              layout="detail").split())


def test_margins_are_per_metric_kind():
    runs = _runs({"pwiser": SMALL})
    auc_only = analysis.summarise(runs, test="ttest", n_boot=200, delong=False,
                                  two_level=False, equivalence="0.001")
    c = auc_only.cells[~auc_only.cells["is_baseline"]].set_index("metric")
    assert c.loc["ctr_auc", "outcome"] == "equivalent" and c.loc["ctr_auc", "margin"] == 0.001
    # an AUC margin does not apply to a logloss: not tested, never "equivalent"
    assert c.loc["ctr_logloss", "outcome"] == "n.s." and np.isnan(c.loc["ctr_logloss", "eq_p"])
    both = analysis.summarise(runs, test="ttest", n_boot=200, delong=False, two_level=False,
                              equivalence="auc=0.001,logloss=0.002")
    c = both.cells[~both.cells["is_baseline"]].set_index("metric")
    assert c.loc["ctr_logloss", "outcome"] == "equivalent"
    assert c.loc["ctr_logloss", "margin"] == 0.002
    logloss_caption = " ".join(to_markdown(build_table(auc_only, kind="logloss"),
                                           layout="detail").split())
    assert "No logloss margin was given: those cells are not tested" in logloss_caption


def test_a_wilcoxon_tost_that_cannot_pass_is_named():
    # 5 arms x 3 AUCs = 15 comparisons: 15 / 2**8 > 0.05, whatever the data
    runs = _runs({a: SMALL for a in ("pwiser", "ranknet", "graded", "listce", "other")})
    s = analysis.summarise(runs, test="wilcoxon", n_boot=200, delong=False, two_level=False,
                           equivalence="0.001")
    assert any("the Wilcoxon equivalence test (TOST) with n=8 seeds over 15 comparisons "
               "cannot reach 0.05" in w for w in s.warnings), s.warnings
    assert not (s.cells["outcome"] == "equivalent").any()
    t = analysis.summarise(runs, test="ttest", n_boot=200, delong=False, two_level=False,
                           equivalence="0.001")
    assert not any("TOST" in w for w in t.warnings)
    assert (t.cells["outcome"] == "equivalent").any()  # the t TOST has no floor


def test_a_seed_only_test_is_warned_about_where_the_test_set_is_shared():
    cells = pd.DataFrame({"dataset": "d", "model": "m", "metric": ["ctr_auc", "cvr_auc", "x"],
                          "arm": "pwiser", "is_baseline": [False, False, True],
                          "seed_var": [1.0, 1.0, np.nan], "shared_var": [0.05, 1.7, np.nan]})
    assert analysis._seed_only_warnings(cells, "twolevel") == []
    (w,) = analysis._seed_only_warnings(cells, "wilcoxon")
    assert "in 1 cell(s) the noise that test set shares across seeds is 10% or more" in w
    assert "up to 63%: d/m/pwiser/cvr_auc" in w and "--test twolevel" in w


def test_a_bad_margin_is_refused():
    with pytest.raises(DataError, match="margin must be a finite number > 0"):
        analysis.summarise(_runs({"pwiser": SMALL}), delong=False, two_level=False,
                           equivalence=-0.1)


# ---------------------------------------------------------------------- CVR logloss
def _preds(rng, n=4000, capped=False):
    click = (rng.random(n) < 0.3).astype(np.int8)
    conversion = (click & (rng.random(n) < 0.2)).astype(np.int8)
    p_ctr = np.clip(0.3 + 0.2 * (click - 0.3) + rng.normal(0, 0.05, n), 0.05, 0.95)
    p_cvr = np.clip(0.2 + 0.2 * (conversion - 0.2) + rng.normal(0, 0.05, n), 0.02, 0.98)
    p_ctcvr = p_ctr * p_cvr
    if capped:  # a model without a CVR tower: p_ctcvr above p_ctr on some rows, p_cvr capped
        p_ctcvr = np.where(rng.random(n) < 0.1, np.minimum(p_ctr * 1.5, 0.99), p_ctcvr)
        p_cvr = np.minimum(1.0, p_ctcvr / p_ctr)
    return ({"p_ctr": p_ctr.astype(np.float32), "p_ctcvr": p_ctcvr.astype(np.float32),
             "p_cvr": p_cvr.astype(np.float32)}, click, conversion)


def test_the_reported_cvr_logloss_does_not_move_with_the_clip_constant():
    rng = np.random.default_rng(0)
    preds, click, conversion = _preds(rng)
    a = engine_test_metrics(preds, click, conversion, None, eps=1e-7)
    b = engine_test_metrics(preds, click, conversion, None, eps=1e-15)
    assert a["cvr_logloss"] == pytest.approx(b["cvr_logloss"], rel=1e-12)
    assert a["ctr_logloss"] == pytest.approx(b["ctr_logloss"], rel=1e-12)
    # The capped p_cvr of a model without a CVR tower would move with eps: it is not reported.
    preds, click, conversion = _preds(rng, capped=True)
    clicked = click == 1
    moved = [logloss(conversion[clicked], preds["p_cvr"][clicked], eps) for eps in (1e-3, 1e-15)]
    assert moved[1] > moved[0] + 0.1  # the artefact the gate exists for
    m = engine_test_metrics(preds, click, conversion, None, cvr_is_probability=False)
    assert "cvr_logloss" not in m and m["cvr_clipped_share"] > 0.05
    assert "cvr_auc" in m  # the AUC, a ranking, is still reported


def test_the_report_drops_an_old_runs_capped_cvr_logloss(tmp_path):
    """A run written before the gate has cvr_logloss in metrics.json; MMoE has no CVR tower,
    so the report leaves it out and the logloss table says why, while ESMM keeps it."""
    from prlbench.report.table import build_table as table_of

    rows = []
    for model in ("mmoe", "esmm"):
        for loss in ("bce", "pwiser"):
            for seed in (1, 2, 3):
                d = tmp_path / f"{model}-{loss}-{seed}"
                _fake_run(d, model, loss, seed)
                rows.append(d)
    runs = analysis.load_runs(rows)
    assert runs.loc[runs["model"] == "mmoe", "cvr_logloss"].isna().all()
    assert runs.loc[runs["model"] == "esmm", "cvr_logloss"].notna().all()
    s = analysis.summarise(runs, n_boot=200, delong=False, two_level=False)
    text = " ".join(table_of(s, kind="logloss").caption.split())
    assert "No CVR logloss for MMoE" in text and "clip constant" in text
    assert "ESMM" not in text.split("No CVR logloss for")[1].split(":")[0]


def _fake_run(d, model: str, loss: str, seed: int) -> None:
    d.mkdir(parents=True)
    base = 0.7 + 0.001 * seed + (0.002 if loss == "pwiser" else 0.0)
    metrics = {"ctr_auc": base, "ctcvr_auc": base + 0.05, "cvr_auc": base + 0.1,
               "ctr_logloss": 0.4, "ctcvr_logloss": 0.1, "cvr_logloss": 0.3 - 0.001 * seed}
    cfg = {"data": {"dataset": "synthetic"}, "model": {"name": model, "preset": "small",
                                                       "overrides": {}},
           "loss": {"name": loss, "params": {}}, "train": {"seed": seed}}
    for name, obj in (("config.json", cfg), ("metrics.json", metrics),
                      ("run.json", {"status": "done", "run_id": d.name, "best_epoch": 1})):
        (d / name).write_text(json.dumps(obj))


def test_cells_csv_keeps_the_seed_only_ci_beside_the_tables_ci():
    s = analysis.summarise(_runs({"pwiser": BIG}), n_boot=500, delong=False, two_level=False)
    c = s.cells[~s.cells["is_baseline"]]
    # without predictions there is no two-level CI: the tables show the seed-only one, and say so
    assert set(c["ci"]) == {"seeds"}
    assert np.allclose(c["delta_lo"], c["seed_lo"]) and np.allclose(c["delta_hi"], c["seed_hi"])
    assert "bootstrap CI of the per-seed differences" in build_table(s).caption
    assert json.loads(json.dumps(list(c.columns)))  # columns are plain names (CSV-safe)


# ------------------------------------------------------------------------ a noise sweep
@pytest.mark.slow
def test_a_noise_sweep_trains_one_variant_per_value_tables_and_plots_it(tmp_path):
    from typer.testing import CliRunner

    from prlbench.cli import app

    args = ["compare", "--datasets", "synthetic", "--noise-rate", "0,0.6", "--rows", "6000",
            "--click-rate", "0.2", "--conversion-rate", "0.3", "--losses", "bce,pwiser",
            "--seeds", "2", "--test", "bootstrap", "--data-dir", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "1024",
            "--preset", "small", "--jobs", "1", "--threads", "1", "-q"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    variants = ["synthetic[click=0.2,conversion=0.3,noise=0,rows=6000]",
                "synthetic[click=0.2,conversion=0.3,noise=0.6,rows=6000]"]
    # each variant its own cache, generated on first use, with the noise it is named by
    for v, noise in zip(variants, (0.0, 0.6)):
        folder = tmp_path / "data" / f"synthetic-click0.2-conversion0.3-noise{noise:g}-rows6000"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["dataset"] == v and manifest["params"]["noise_rate"] == noise
    cells = pd.read_csv(tmp_path / "out" / "tables" / "cells.csv")
    assert list(dict.fromkeys(cells["dataset"])) == variants
    from prlbench.report.csvout import SWEEP_CSV  # as docs/results-format.md lists them

    sweep_cols = list(pd.read_csv(tmp_path / "out" / "tables" / "sweep.csv").columns)
    assert sweep_cols == [c for c, _, _ in SWEEP_CSV]
    compared = cells[~cells["is_baseline"] & cells["metric"].str.endswith("auc")]
    assert set(compared["ci"]) == {"two-level"}  # the predictions were there
    assert compared["boot_p"].between(0, 1).all() and compared["p_beats"].between(0, 1).all()
    assert np.allclose(compared["p"], compared["boot_p"])  # --test bootstrap sets the marker
    md = " ".join((tmp_path / "out" / "tables" / "auc_detail.md").read_text().split())
    assert "Synthetic (click 0.2, conversion 0.3, noise 0, rows 6,000)" in md
    assert "two-level CI: the crossed seeds × test-rows model" in md
    sweep = pd.read_csv(tmp_path / "out" / "tables" / "sweep.csv")
    assert sorted(sweep["value"].unique()) == [0.0, 0.6] and set(sweep["knob"]) == {"noise_rate"}
    assert {"ctr_auc", "ctcvr_auc", "ctr_auc_noise_free"} <= set(sweep["metric"])
    for ext in ("png", "pdf"):
        assert (tmp_path / "out" / "plots" / f"sweep.{ext}").stat().st_size > 1000
    # A second call trains nothing: every variant's runs are found again.
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0
    record = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert {x["status"] for x in record["runs"]} == {"reused"}
    # The two-level captions under the default test, with margins per kind: the crossed
    # model's symbols compile in a plain paper's preamble (where a TeX engine exists).
    r = CliRunner().invoke(app, [*args, "--tables-only", "--test", "twolevel", "--equivalence",
                                 "auc=0.002,logloss=0.001"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cells = pd.read_csv(tmp_path / "out" / "tables" / "cells.csv")
    compared = cells[~cells["is_baseline"]]
    assert np.allclose(compared["p"], compared["twolevel_p"])
    assert set(compared["margin"]) == {0.002, 0.001}
    # The sweep's tables and setup paragraph compile in a two-column paper (with bibtex),
    # nothing overfull; the protocol the short captions leave out is in the setup.
    tables = tmp_path / "out" / "tables"
    setup = " ".join((tables / "setup.md").read_text().split())
    assert "each family controls its own error" in setup and "(Holm 1979)" in setup
    from test_paper_tables import HAS_TEX, compile_paper

    if HAS_TEX:
        text = compile_paper(tables)
        assert not text or "each family controls its own error" in text


def test_sweep_flags_need_a_generated_data_set():
    with pytest.raises(ConfigError, match="noise"):
        CompareConfig.resolve(None, {"datasets": "aliexpress_nl", "noise_rate": "0,0.5"})
    with pytest.raises(ConfigError):
        resolved(noise_rate="0.2,-1")
    with pytest.raises(ConfigError, match="--rows must be whole numbers"):
        resolved(rows="1000.5")
    grid = resolved(noise_rate="0,0.5", conversion_rate="0.05").grid
    assert grid.datasets == ("synthetic[conversion=0.05,noise=0]",
                             "synthetic[conversion=0.05,noise=0.5]")
